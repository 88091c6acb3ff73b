"""The examples run briefly and learn."""

import importlib.util
import pathlib

import jax
import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_loss_falls():
    # Flax and scikit-learn code is not ours: run it with standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        result = load("quickstart").main(["--steps", "60"])
    losses = result["losses"]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert result["test_accuracy"] > 0.8
