"""Test settings: strict dtype promotion so that any dtype slip fails loudly."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_dtype_promotion", "strict")

# Hypothesis: a few dozen examples per property in `make test`, many more in
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz). Compiling dominates, so no deadline.
_quiet = dict(deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("ci", max_examples=30, **_quiet)
settings.register_profile("fuzz", max_examples=1500, **_quiet)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (the rest of the suite stays float32)."""
    with jax.enable_x64(True):
        yield
