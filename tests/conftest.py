"""Test settings: strict dtype promotion so that any dtype slip fails loudly."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (the rest of the suite stays float32)."""
    with jax.enable_x64(True):
        yield
