"""The examples run briefly and learn."""

import importlib.util
import pathlib
import sys

import jax
import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"example_{name}"] = module  # dataclasses (Flax Linen) look themselves up here
    spec.loader.exec_module(module)
    return module


def test_flax_nnx_classifier_loss_falls():
    # Flax and scikit-learn code is not ours: run it with standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        result = load("flax_nnx_classifier").main(["--steps", "60"])
    losses = result["losses"]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert result["test_accuracy"] > 0.8
