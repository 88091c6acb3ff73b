"""Narrow state dtypes and stochastic rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmsprop_jax


def _stored_mean(g, dtype, seed=0):
    """The centered mean after one step with decay 0: exactly g, stored in
    ``dtype`` with stochastic rounding."""
    opt = rmsprop_jax.rmsprop(
        0.1, decay=0.0, centered=True, mu_dtype=dtype, stochastic_rounding=True, seed=seed
    )
    params = jnp.zeros_like(g)
    _, state = jax.jit(opt.update)(g, opt.init(params), params)
    return state.mu


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_rounding_is_unbiased(dtype):
    x = jnp.full((200_000,), 1.0 + 1 / 3 * float(jnp.finfo(dtype).eps), jnp.float32)
    rounded = _stored_mean(x, dtype)
    assert rounded.dtype == dtype
    values = np.unique(np.asarray(rounded, np.float32))
    assert len(values) == 2  # only the two neighbours of x
    mean = np.asarray(rounded, np.float64).mean()
    ulp = float(jnp.finfo(dtype).eps)
    # one third of the way up: the mean is x to within a few standard errors
    assert abs(mean - float(x[0])) < 5 * ulp * np.sqrt(2 / 9 / x.size)
    nearest = np.asarray(x.astype(dtype), np.float64).mean()
    assert abs(nearest - float(x[0])) > ulp / 4  # round-to-nearest is biased here


def _rounded_up(dtype, n, steps, seed=0):
    """Whether each of ``n`` elements at 1 + eps/3 (eps of ``dtype``) rounds up,
    at each of ``steps`` steps (keys as ``update`` makes them: seed, step, leaf)."""
    from rmsprop_jax import _storage

    x = jnp.full((n,), 1.0 + float(jnp.finfo(dtype).eps) / 3, jnp.float32)
    keys = jnp.stack([_storage.mix(seed, t, 0) for t in range(1, steps + 1)])
    rounded = jax.jit(jax.vmap(lambda k: _storage.stochastic_round(x, dtype, k)))(keys)
    return np.asarray(rounded, np.float32) > 1.0  # (steps, n)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_every_element_rounds_unbiasedly_from_step_to_step(dtype):
    """Each element's own rounding, over steps, goes up a third of the time: the
    key, new every step, must reach every element's random bits."""
    up = _rounded_up(dtype, 64, 4000)
    assert np.abs(up.mean(axis=0) - 1 / 3).max() < 5 * np.sqrt(2 / 9 / 4000)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_neighbours_and_successive_steps_round_independently(dtype):
    """No correlation between neighbouring elements in a step, nor between an
    element's successive steps (a bare Weyl sequence of the index, for one,
    ties each element's bits to its neighbour's: correlation -0.4 here)."""
    up = _rounded_up(dtype, 4096, 64).astype(np.float64)
    bound = 5 / np.sqrt(up.size)  # five standard errors of a correlation near 0
    for lag in (1, 2, 64):
        corr = np.corrcoef(up[:, :-lag].ravel(), up[:, lag:].ravel())[0, 1]
        assert abs(corr) < bound, (lag, corr)
    corr = np.corrcoef(up[:-1].ravel(), up[1:].ravel())[0, 1]
    assert abs(corr) < bound, corr


def test_exact_values_are_kept():
    x = jnp.asarray([0.0, 1.0, -2.5, 3.0e38, 1e-45], jnp.float32)
    out = np.asarray(_stored_mean(x, jnp.bfloat16, seed=1), np.float32)
    np.testing.assert_array_equal(out[:3], [0.0, 1.0, -2.5])
    assert np.all(np.isfinite(out))


def _slow_average(nu_dtype, stochastic_rounding, steps=3000, seed=0):
    """nu tracks E[g^2] = 1 with decay 0.999, for 256 coordinates."""
    opt = rmsprop_jax.scale_by_rms(
        decay=0.999, nu_dtype=nu_dtype, stochastic_rounding=stochastic_rounding, seed=seed
    )
    params = jnp.zeros(256)
    g = jnp.ones(256)

    def body(state, _):
        _, state = opt.update(g, state)
        return state, None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(opt.init(params))
    return np.asarray(state.nu, np.float64)


def test_bfloat16_slow_average_tracks_float32_only_with_stochastic_rounding():
    reference = _slow_average(None, False)  # float32 state
    exact = 1 - 0.999**3000
    np.testing.assert_allclose(reference, exact, rtol=1e-3)
    nearest = _slow_average(jnp.bfloat16, False)
    stochastic = _slow_average(jnp.bfloat16, True)
    # Round-to-nearest stalls where 0.001 * (1 - nu) drops below half an ulp.
    assert abs(nearest.mean() - exact) > 0.2
    assert abs(stochastic.mean() - exact) < 0.01
    assert np.abs(stochastic - exact).max() < 0.05


def test_stochastic_rounding_is_deterministic_per_seed():
    a = _slow_average(jnp.bfloat16, True, steps=200, seed=3)
    b = _slow_average(jnp.bfloat16, True, steps=200, seed=3)
    c = _slow_average(jnp.bfloat16, True, steps=200, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_narrow_state_halves_the_bytes():
    params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}

    def nbytes(**kw):
        state = rmsprop_jax.rmsprop(0.1, centered=True, momentum=0.9, **kw).init(params)
        return sum(x.nbytes for x in jax.tree.leaves((state.nu, state.mu, state.trace)))

    assert nbytes(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16) * 2 == nbytes()


def test_stochastic_rounding_without_narrow_state_changes_nothing():
    params = {"w": jnp.linspace(-1, 1, 7)}
    grads = {"w": jnp.linspace(0.5, -0.3, 7)}
    a = rmsprop_jax.rmsprop(0.1, momentum=0.9, stochastic_rounding=True)
    b = rmsprop_jax.rmsprop(0.1, momentum=0.9)
    ua, sa = a.update(grads, a.init(params), params)
    ub, sb = b.update(grads, b.init(params), params)
    for x, y in zip(jax.tree.leaves((ua, sa)), jax.tree.leaves((ub, sb))):
        np.testing.assert_array_equal(x, y)


def test_stochastic_rounding_with_complex_and_traced_seed():
    opt = jax.jit(
        lambda seed: rmsprop_jax.rmsprop(
            0.1,
            centered=True,
            momentum=0.9,
            nu_dtype=jnp.bfloat16,
            mu_dtype=jnp.bfloat16,
            stochastic_rounding=True,
            seed=seed,
        ).update(
            {"z": jnp.ones(4, jnp.complex64)},
            rmsprop_jax.rmsprop(
                0.1, centered=True, momentum=0.9, nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16
            ).init({"z": jnp.ones(4, jnp.complex64)}),
        )
    )
    updates, state = opt(jnp.asarray(7, jnp.uint32))
    assert updates["z"].dtype == jnp.complex64 and state.mu["z"].dtype == jnp.complex64
    assert np.all(np.isfinite(np.asarray(updates["z"])))
