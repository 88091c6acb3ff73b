"""optax's transform tests that concern RMS scaling, ported to rmsprop_jax.scale_by_rms.

Source: google-deepmind/optax, ``optax/_src/transform_test.py`` at v0.2.8,
class ``TransformTest``: ``test_scalers`` (its ``rmsprop`` and ``stddev``
entries, i.e. ``scale_by_rms`` and ``scale_by_stddev``) and
``test_rms_match_adam``. The other cases of that file test other transforms
(see ``NOT_APPLICABLE.md``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import assert_trees_close

import rmsprop_jax

# TransformTest.setUp
INIT_PARAMS = (jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
PER_STEP_UPDATES = (jnp.array([500.0, 5.0]), jnp.array([300.0, 3.0]))

# test_scalers' two RMS entries: ours with default arguments, and the optax
# transform each must equal (optax.scale_by_stddev is the centered one).
SCALERS = {
    "rmsprop": (lambda: rmsprop_jax.scale_by_rms(), optax.scale_by_rms),
    "stddev": (lambda: rmsprop_jax.scale_by_rms(centered=True), optax.scale_by_stddev),
}


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_scalers(name):
    ours, theirs = SCALERS[name]
    scaler = ours()
    state = jax.jit(scaler.init)(INIT_PARAMS)
    assert all_finite(state)
    updates, state = jax.jit(scaler.update)(PER_STEP_UPDATES, state, INIT_PARAMS)
    assert all_finite((INIT_PARAMS, updates, state))
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, INIT_PARAMS)
    # Beyond the peer: the same numbers as the optax transform it replaces.
    peer = theirs()
    want, _ = peer.update(PER_STEP_UPDATES, peer.init(INIT_PARAMS), INIT_PARAMS)
    assert_trees_close(updates, want, rtol=1e-6)


# The peer's tolerance (optax test_utils' assert_trees_all_close defaults:
# rtol 1e-6, atol 0). float64 runs under x64; float32 must not, because under
# x64 optax computes its correction 1 - 0.999**count in float64 (a Python
# float raised to an int32 count promotes to the default float), which differs
# from the float32 correction both libraries compute without x64 by 1.3e-5.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rms_match_adam(dtype):
    """scale_by_rms with eps outside the root and bias correction is Adam with b1=0."""
    with jax.enable_x64(dtype == "float64"):
        _rms_match_adam(dtype, rtol=1e-6)


def _rms_match_adam(dtype, rtol):
    init_params = jax.tree.map(lambda x: x.astype(dtype), INIT_PARAMS)
    squared_norm = lambda x: optax.tree.norm(x, squared=True)
    rms = rmsprop_jax.scale_by_rms(decay=0.999, eps_in_sqrt=False, bias_correction=True)
    adam = optax.scale_by_adam(b1=0)
    rms_params, rms_state = init_params, rms.init(init_params)
    adam_params, adam_state = init_params, adam.init(init_params)
    for _ in range(5):
        updates, rms_state = rms.update(jax.grad(squared_norm)(rms_params), rms_state)
        rms_params = optax.apply_updates(rms_params, updates)
        # optax's bias correction raises a float to an int32 count: standard
        # promotion for the peer's side only.
        with jax.numpy_dtype_promotion("standard"):
            updates, adam_state = adam.update(jax.grad(squared_norm)(adam_params), adam_state)
        adam_params = optax.apply_updates(adam_params, updates)
    assert rms_params[0].dtype == jnp.dtype(dtype)
    assert_trees_close(rms_params, adam_params, rtol=rtol, atol=0)
    # Five steps of about one unit each (the peer applies the scaled gradient
    # itself, so the parameters climb).
    assert np.all(np.abs(np.asarray(rms_params[0]) - np.asarray(init_params[0])) > 1)
