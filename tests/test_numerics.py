"""No finite input gives a NaN or Inf (docs/algorithm.md, "differs on purpose")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmsprop_jax


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize("centered", [False, True])
def test_eps_zero_with_zero_gradients_gives_zero_step(eps_in_sqrt, centered):
    opt = rmsprop_jax.rmsprop(0.1, eps=0.0, eps_in_sqrt=eps_in_sqrt, centered=centered)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update({"w": jnp.zeros(3)}, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)


def test_eps_zero_zero_gradient_has_finite_derivative():
    """The discarded branch of the zero-division guard must not poison gradients."""

    def loss(lr):
        opt = rmsprop_jax.rmsprop(lr, eps=0.0)
        params = {"w": jnp.array([1.0, 2.0])}
        updates, _ = opt.update({"w": jnp.array([0.0, 1.0])}, opt.init(params), params)
        return jnp.sum(updates["w"])

    assert np.isfinite(jax.grad(loss)(0.1))


def test_centered_variance_rounding_below_zero_is_clamped():
    # A constant gradient makes nu - mu^2 exactly 0 in exact arithmetic; in
    # float32 it rounds to tiny negative numbers for some values.
    values = jnp.linspace(0.1, 10.0, 1000, dtype=jnp.float32)
    opt = rmsprop_jax.rmsprop(0.1, eps=0.0, decay=0.0, centered=True)
    params = {"w": jnp.zeros_like(values)}
    state = opt.init(params)
    nu_minus_mu2 = []
    for _ in range(5):
        updates, state = opt.update({"w": values}, state, params)
        nu_minus_mu2.append(np.asarray(state.nu["w"] - state.mu["w"] ** 2))
        assert _finite(updates)
    assert min(x.min() for x in nu_minus_mu2) <= 0  # the hazard really occurred


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_params_zero_and_small_gradients(dtype):
    # eps = 1e-8 underflows in float16; the denominator is computed in float32.
    assert jnp.asarray(1e-8, jnp.float16) == 0
    opt = rmsprop_jax.rmsprop(1e-3, momentum=0.9, centered=True)
    params = {"w": jnp.ones(4, dtype)}
    state = opt.init(params)
    for g in ([0.0, 0.0, 0.0, 0.0], [1e-4, -1e-4, 0.0, 6e-5], [0.0, 0.0, 0.0, 0.0]):
        updates, state = jax.jit(opt.update)({"w": jnp.asarray(g, dtype)}, state, params)
        assert updates["w"].dtype == dtype
        assert _finite(updates) and _finite(state)


def test_tiny_gradients_whose_squares_underflow():
    opt = rmsprop_jax.rmsprop(0.1, eps=0.0)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    updates, state = opt.update({"w": jnp.array([1e-30, -1e-38, 1e-45])}, state, params)
    assert _finite(updates) and _finite(state)
    assert np.all(np.asarray(updates["w"]) <= 0) and updates["w"][1] >= 0


def test_float16_update_saturates_instead_of_overflowing():
    # centered with decay 0: the variance is exactly 0, so the step is g / eps,
    # 1e8 times the gradient, far beyond float16's largest value (65504).
    opt = rmsprop_jax.rmsprop(1.0, decay=0.0, centered=True, eps=1e-8, eps_in_sqrt=False)
    params = {"w": jnp.zeros(2, jnp.float16)}
    grads = {"w": jnp.array([1.0, -1.0], jnp.float16)}
    updates, state = opt.update(grads, opt.init(params), params)
    assert updates["w"].dtype == jnp.float16
    np.testing.assert_array_equal(updates["w"], [-65504.0, 65504.0])
    assert _finite(state)
