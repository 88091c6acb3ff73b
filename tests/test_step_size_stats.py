"""step_size_stats: the per-coordinate step size lr / d from configuration and state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import presets


def _trained(opt, params, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    state = opt.init(params)
    for _ in range(steps):
        g = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape) * 10.0 ** rng.uniform(-3, 1, p.shape)),
            params,
        )
        _, state = opt.update(g, state, params)
    return state


def _expected(nu, mu, lr, eps, eps_in_sqrt, correction=1.0):
    v = np.asarray(nu, np.float64) / correction
    if mu is not None:
        v = v - np.minimum((np.asarray(mu, np.float64) / correction) ** 2, v)
    d = np.sqrt(v + eps) if eps_in_sqrt else np.sqrt(v) + eps
    size = lr / d
    return np.median(size), np.max(size)


@pytest.mark.parametrize(
    "make, lr, eps, eps_in_sqrt, centered",
    [
        (lambda: rmsprop_jax.rmsprop(0.01, eps=1e-6), 0.01, 1e-6, True, False),
        (lambda: rmsprop_jax.rmsprop(0.01, eps=1e-6, centered=True), 0.01, 1e-6, True, True),
        (lambda: presets.pytorch(lr=0.02, momentum=0.9), 0.02, 1e-8, False, False),
        (lambda: presets.keras(learning_rate=0.003, clipnorm=1.0), 0.003, 1e-7, True, False),
        (lambda: rmsprop_jax.scale_by_rms(eps=1e-4), 1.0, 1e-4, True, False),
    ],
)
def test_matches_the_state_by_hand(make, lr, eps, eps_in_sqrt, centered):
    opt = make()
    params = {"w": jnp.zeros((8, 16)), "b": jnp.zeros(16)}
    state = _trained(opt, params)
    inner = opt if isinstance(state, rmsprop_jax.RMSpropState) else None
    core_state = state if inner else state[1]  # keras' clip chain: (clip, core)
    stats = rmsprop_jax.step_size_stats(opt, state)
    for name in params:
        mu = core_state.mu[name] if centered else None
        median, largest = _expected(core_state.nu[name], mu, lr, eps, eps_in_sqrt)
        np.testing.assert_allclose(float(stats[name].median), median, rtol=1e-5)
        np.testing.assert_allclose(float(stats[name].max), largest, rtol=1e-5)
        assert float(stats[name].frozen) == 0.0


def test_bias_correction_schedule_and_jit():
    schedule = optax.linear_schedule(0.1, 0.0, 10)
    opt = rmsprop_jax.rmsprop(schedule, decay=0.9, bias_correction=True, eps=1e-8)
    params = {"w": jnp.zeros(64)}
    state = _trained(opt, params, steps=4)
    stats = jax.jit(lambda s: rmsprop_jax.step_size_stats(opt, s))(state)["w"]
    lr = float(schedule(4))  # the next step's rate
    median, largest = _expected(state.nu["w"], None, lr, 1e-8, True, correction=1 - 0.9**4)
    np.testing.assert_allclose(float(stats.median), median, rtol=1e-5)
    np.testing.assert_allclose(float(stats.max), largest, rtol=1e-5)


def test_frozen_coordinates():
    big = float(jnp.finfo(jnp.float32).max) ** 0.5 * 4  # its square overflows
    opt = rmsprop_jax.rmsprop(0.1, eps=0.0)
    params = {"w": jnp.zeros(4)}
    _, state = opt.update({"w": jnp.asarray([big, 1.0, 0.0, 2.0])}, opt.init(params))
    stats = rmsprop_jax.step_size_stats(opt, state)["w"]
    assert float(stats.frozen) == pytest.approx(0.5)  # inf and 0 denominators
    np.testing.assert_allclose(float(stats.max), 0.1 / np.sqrt(0.1 * 1.0), rtol=1e-6)


def test_eight_bit_and_factored_states_read_like_float32():
    params = {"w": jnp.zeros((128, 256))}
    kw = dict(eps=1e-8, momentum=0.9)
    eight = rmsprop_jax.blockwise_8bit()
    ref = rmsprop_jax.step_size_stats(
        rmsprop_jax.rmsprop(0.01, **kw), _trained(rmsprop_jax.rmsprop(0.01, **kw), params)
    )["w"]
    for opt in (
        rmsprop_jax.rmsprop(0.01, nu_dtype=eight, mu_dtype=eight, **kw),
        rmsprop_jax.rmsprop(0.01, nu_dtype=eight, centered=True, **kw),
    ):
        got = rmsprop_jax.step_size_stats(opt, _trained(opt, params))["w"]
        np.testing.assert_allclose(float(got.median), float(ref.median), rtol=0.1)
        np.testing.assert_allclose(float(got.max), float(ref.max), rtol=0.1)
    factored = rmsprop_jax.rmsprop(0.01, factored=True, **kw)
    stats = rmsprop_jax.step_size_stats(factored, _trained(factored, params))["w"]
    assert 0 < float(stats.median) <= float(stats.max)


def test_inside_a_chain_and_errors():
    opt = rmsprop_jax.rmsprop(0.01)
    chain = optax.chain(optax.clip(1.0), opt)
    params = {"w": jnp.zeros(8)}
    state = _trained(chain, params)
    stats = rmsprop_jax.step_size_stats(opt, state)
    assert float(stats["w"].median) > 0
    with pytest.raises(ValueError, match="`optimizer` must be a transform built by rmsprop_jax"):
        rmsprop_jax.step_size_stats(chain, state)
    with pytest.raises(ValueError, match="exactly one rmsprop_jax RMSpropState"):
        rmsprop_jax.step_size_stats(opt, (state, state))
    injected = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.05)
    istate = _trained(injected, params)
    # the inner transform is rebuilt each step: pass the injected rate with a twin
    twin = rmsprop_jax.rmsprop(0.05)
    a = rmsprop_jax.step_size_stats(twin, istate, learning_rate=istate.hyperparams["learning_rate"])
    assert float(a["w"].median) > 0
