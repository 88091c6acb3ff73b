"""The examples run briefly and learn."""

import jax
import numpy as np
from helpers import load_example


def test_flax_nnx_classifier_loss_falls():
    # Flax and scikit-learn code is not ours: run it with standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        result = load_example("flax_nnx_classifier").main(["--steps", "60"])
    losses = result["losses"]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert result["test_accuracy"] > 0.8
