"""Keras' own RMSprop tests, ported to rmsprop_jax.presets.keras.

Source: keras-team/keras, ``keras/src/optimizers/rmsprop_test.py`` at v3.15.1
(the installed Keras), class ``RMSpropTest``. The golden values and
tolerances are Keras'. ``test_config`` (Keras serialization) does not apply:
see ``NOT_APPLICABLE.md``.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import state_field

import rmsprop_jax
from rmsprop_jax import presets


def apply(opt, params, grads_seq):
    """Runs ``opt`` on the given gradients; returns the parameters after each step."""
    state = opt.init(params)
    out = []
    for grads in grads_seq:
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


def test_single_step():
    opt = presets.keras(learning_rate=0.5)
    grads = jnp.array([1.0, 6.0, 7.0, 2.0])
    params = jnp.array([1.0, 2.0, 3.0, 4.0])
    (after,), _ = apply(opt, params, [grads])
    np.testing.assert_allclose(after, [-0.5811, 0.4189, 1.4189, 2.4189], rtol=1e-4, atol=1e-4)


def test_weight_decay():
    """Keras applies 0.004 * lr of decay before the step, and a zero gradient
    makes the RMSprop step zero: var1 decays once in each of three optimizers;
    var2 and var3, excluded from decay, stay at 2."""
    zero = jnp.zeros(())
    var1 = jnp.asarray(2.0)
    for _ in range(3):  # optimizer_1, optimizer_2 and optimizer_3 each step var1
        (var1,), _ = apply(presets.keras(learning_rate=1.0, weight_decay=0.004), var1, [zero])
    np.testing.assert_allclose(var1, 1.9760959, atol=1.5e-6)  # assertAlmostEqual(places=6)

    # Keras excludes variables by name or by identity; the preset takes no
    # such list, so the exclusion is rmsprop_jax.rmsprop's weight_decay_mask
    # on the same configuration (Keras' weight decay is the decoupled mode).
    keras_like = rmsprop_jax.rmsprop(
        1.0,
        decay=0.9,
        eps=1e-7,
        weight_decay=0.004,
        weight_decay_mask={"var1": True, "excluded": False},
    )
    params = {"var1": jnp.asarray(2.0), "excluded": jnp.asarray(2.0)}
    (after,), _ = apply(keras_like, params, [{"var1": zero, "excluded": zero}])
    np.testing.assert_allclose(after["var1"], 2.0 * (1 - 0.004), rtol=1e-7)
    np.testing.assert_allclose(after["excluded"], 2.0, atol=1.5e-6)


def test_correctness_with_golden():
    opt = presets.keras(centered=True)  # learning_rate=1e-3, rho=0.9, epsilon=1e-7
    params = jnp.ones(10)
    grads = jnp.arange(1, 11, dtype=jnp.float32) / 10  # ops.arange(0.1, 1.1, 0.1)
    first_grads = jnp.full((10,), 0.01)
    golden = np.tile([[0.9967], [0.9933], [0.9908], [0.9885], [0.9864]], (1, 10))
    trajectory, _ = apply(opt, params, [first_grads] + [grads] * 4)
    for step, (got, want) in enumerate(zip(trajectory, golden, strict=True)):
        np.testing.assert_allclose(got, want, rtol=5e-4, atol=5e-4, err_msg=f"step {step}")


# Keras checks its private _clip_gradients. The preset's clipping is a step of
# the transform, so the clipped gradient is read back from the centered state:
# after one step from zero, mu = (1 - rho) * clipped gradient.
@pytest.mark.parametrize(
    ("clip", "want"),
    [
        (dict(clipnorm=1), [2**0.5 / 2, 2**0.5 / 2]),  # RMSpropTest.test_clip_norm
        (dict(clipvalue=1), [1.0, 1.0]),  # RMSpropTest.test_clip_value
    ],
    ids=["test_clip_norm", "test_clip_value"],
)
def test_clipping(clip, want):
    rho = 0.9
    opt = presets.keras(rho=rho, centered=True, **clip)
    grad = jnp.array([100.0, 100.0])
    _, state = apply(opt, jnp.zeros(2), [grad])
    clipped = np.asarray(state_field(state, "mu")) / (1 - rho)
    np.testing.assert_allclose(clipped, want, rtol=1e-6)
