"""stochastic_param_rounding: bfloat16/float16 parameters that take every small step
on average, landing exactly where the transform says."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion

import rmsprop_jax

SPR = rmsprop_jax.stochastic_param_rounding


def _apply(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), updates, state


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("start", [1.0, -3.0, 1e-3])
def test_expected_new_parameter_is_p_plus_u(dtype, start):
    """Over many coordinates, the mean landing equals p + u to sampling error,
    where round-to-nearest is off by a third of a unit in the last place."""
    n = 200_000
    p = jnp.full(n, start, dtype)
    ulp = float(jnp.finfo(dtype).eps) * 2.0 ** np.floor(np.log2(abs(start)))
    u = jnp.full(n, ulp / 3, dtype)  # a third of the gap to the next value up
    tx = SPR(seed=1)
    new, _, _ = _apply(tx, {"w": p}, {"w": u})
    target = float(np.float32(p[0]) + np.float32(u[0]))
    got = np.asarray(new["w"], np.float64)
    assert len(np.unique(got)) == 2  # only p's two neighbours around p + u
    assert abs(got.mean() - target) < 5 * ulp * np.sqrt(2 / 9 / n)
    nearest = float(np.asarray(optax.apply_updates({"w": p}, {"w": u})["w"][0], np.float64))
    assert abs(nearest - target) > ulp / 4  # round-to-nearest is biased here


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_apply_updates_lands_on_the_rounded_value_bit_for_bit(dtype):
    """apply_updates(p, u') is r, one of the two neighbours of p + u, bit for bit;
    u' is exactly r - p for steps smaller than the parameter."""
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.choice([-1, 1], 8192) * rng.uniform(0.5, 4, 8192), dtype)
    u = jnp.asarray(rng.normal(size=8192) * 1e-2, dtype)
    tx = SPR(seed=5)
    new, updates, _ = _apply(tx, {"w": p}, {"w": u})
    r = np.asarray(new["w"], np.float32)
    target = np.asarray(p, np.float32) + np.asarray(u, np.float32)
    lo = np.asarray(jnp.asarray(target, dtype), np.float32)
    away = np.where(target >= lo, np.inf, -np.inf)  # toward p + u from its nearest value
    hi = np.asarray(jnp.nextafter(jnp.asarray(target, dtype), jnp.asarray(away, dtype)), np.float32)
    assert np.all((r == lo) | (r == hi))  # a neighbour of p + u
    np.testing.assert_array_equal(
        np.asarray(updates["w"], np.float32), r - np.asarray(p, np.float32)
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_large_steps_land_exactly_where_any_update_can(dtype):
    """Steps as large as the parameter (signs change, magnitudes halve): u' is
    chosen so that apply_updates still gives r wherever some update of u's
    dtype can; count the exceptions."""
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.normal(size=8192), dtype)
    u = jnp.asarray(rng.normal(size=8192), dtype)
    tx = SPR(seed=6)
    state = tx.init({"w": p})
    updates, _ = tx.update({"w": u}, state, {"w": p})
    landed = np.asarray(optax.apply_updates({"w": p}, updates)["w"], np.float32)
    # r, as the transform rounds it: recompute it with float32 updates (exact).
    wide, _ = tx.update({"w": u.astype(jnp.float32)}, state, {"w": p})
    with standard_promotion():
        r = np.asarray(optax.apply_updates({"w": p}, wide)["w"], np.float32)
    miss = landed != r
    assert miss.mean() < 0.1, miss.mean()
    # At every miss no update of u's dtype near r - p lands on r (p + u' lies
    # on a grid that skips r): the transform took a landing update wherever
    # there is one.
    pf = jnp.asarray(p, jnp.float32)[miss]
    d = jnp.asarray(r[miss] - np.asarray(pf), dtype)
    candidates = [d]
    for direction in (jnp.inf, -jnp.inf):
        c = d
        for _ in range(4):
            c = jnp.nextafter(c, jnp.full_like(c, direction))
            candidates.append(c)
    for c in candidates:
        lands = np.asarray((pf + c.astype(jnp.float32)).astype(dtype), np.float32) == r[miss]
        assert not lands.any()


def test_slow_drift_tracks_float32_where_round_to_nearest_stalls():
    """A constant small gradient: bfloat16 parameters with round-to-nearest do
    not move at all; with stochastic rounding they follow the float32 run."""
    steps, n = 400, 1024
    grads = {"w": jnp.full(n, 1.0, jnp.bfloat16)}

    def run(dtype, rounding):
        tx = optax.sgd(1e-3)
        if rounding:
            tx = optax.chain(tx, SPR(seed=0))
        params = {"w": jnp.full(n, 1.0, dtype)}
        state = tx.init(params)

        def body(carry, _):
            params, state = carry
            updates, state = tx.update(
                jax.tree.map(lambda g: g.astype(dtype), grads), state, params
            )
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(
            (params, state)
        )
        return np.asarray(params["w"], np.float64)

    exact = 1.0 - steps * 1e-3
    float32 = run(jnp.float32, False)
    nearest = run(jnp.bfloat16, False)
    stochastic = run(jnp.bfloat16, True)
    np.testing.assert_allclose(float32, exact, atol=1e-5)
    np.testing.assert_array_equal(nearest, 1.0)  # every step is below half an ulp
    # Each coordinate is a random walk of 400 roundings with an ulp of 2**-8:
    # spread about 0.035, so the mean over 1024 is exact to about 0.001.
    assert abs(stochastic.mean() - exact) < 5e-3
    assert stochastic.std() < 0.06


def test_deterministic_per_seed_and_step():
    params = {"w": jnp.ones(1000, jnp.bfloat16)}
    grads = {"w": jnp.full(1000, 1e-3, jnp.bfloat16)}
    tx = optax.chain(optax.sgd(1.0), SPR(seed=3))
    a1, _, sa = _apply(tx, params, grads)
    b1, _, _ = _apply(tx, params, grads)
    np.testing.assert_array_equal(a1["w"], b1["w"])
    a2, _, _ = _apply(tx, params, grads, sa)  # the next step draws anew
    assert not np.array_equal(np.asarray(a1["w"]), np.asarray(a2["w"]))
    c1, _, _ = _apply(optax.chain(optax.sgd(1.0), SPR(seed=4)), params, grads)
    assert not np.array_equal(np.asarray(a1["w"]), np.asarray(c1["w"]))
    jitted = jax.jit(tx.update)(grads, tx.init(params), params)[0]
    np.testing.assert_array_equal(
        optax.apply_updates(params, jitted)["w"], a1["w"]
    )  # the same under jit


def test_wider_and_other_leaves_pass_through():
    params = {
        "f32": jnp.ones(3),
        "i": jnp.arange(3),
        "z": jnp.ones(2, jnp.complex64),
        "bf": jnp.ones(2, jnp.bfloat16),
    }
    updates = {
        "f32": jnp.full(3, 1e-3),
        "i": jnp.zeros(3, jnp.int32),
        "z": jnp.full(2, 1e-3 + 0j, jnp.complex64),
        "bf": jnp.full(2, 1e-3, jnp.bfloat16),
    }
    tx = SPR()
    out, _ = tx.update(updates, tx.init(params), params)
    for name in ("f32", "i", "z"):
        assert out[name] is updates[name]
    assert out["bf"].dtype == jnp.bfloat16


def test_float64_passes_through(x64):
    params = {"w": jnp.ones(3, jnp.float64)}
    updates = {"w": jnp.full(3, 1e-12, jnp.float64)}
    tx = SPR()
    out, _ = tx.update(updates, tx.init(params), params)
    assert out["w"] is updates["w"]


def test_bad_input():
    tx = SPR()
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match="`params` must be passed"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="do not match"):
        tx.update(params, tx.init(params), {"v": params["w"]})
    with pytest.raises(ValueError, match="shape"):
        tx.update(params, tx.init(params), {"w": jnp.ones(4, jnp.bfloat16)})
    for seed in (-1, 2**32, 0.5, "0"):
        with pytest.raises(ValueError, match="`seed`"):
            SPR(seed=seed)


def test_large_steps_saturate_instead_of_overflowing():
    params = {"w": jnp.asarray([60000.0, -60000.0], jnp.float16)}
    tx = SPR()
    new, _, _ = _apply(tx, params, {"w": jnp.asarray([30000.0, -30000.0], jnp.float16)})
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), [65504.0, -65504.0])


# --------------------------------------------------------------------------
# Composition: jit, vmap, MultiSteps, apply_if_finite, Flax NNX, RMSprop state
# in bfloat16 too.


def test_vmap_and_traced_seed():
    params = {"w": jnp.ones((4, 64), jnp.bfloat16)}
    grads = {"w": jnp.full((4, 64), 1e-3, jnp.bfloat16)}

    def one(seed, p, g):
        tx = SPR(seed=seed)
        u, _ = tx.update({"w": g}, tx.init({"w": p}), {"w": p})
        return u["w"]

    out = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))(jnp.uint32(9), params["w"], grads["w"])
    assert out.shape == (4, 64) and out.dtype == jnp.bfloat16
    # members are rounded independently of the batch: each equals its own run
    for i in range(4):
        np.testing.assert_array_equal(out[i], one(9, params["w"][i], grads["w"][i]))


def test_multisteps_and_apply_if_finite():
    params = {"w": jnp.ones(512, jnp.bfloat16)}
    tx = optax.MultiSteps(optax.chain(optax.sgd(1e-3), SPR(seed=2)), every_k_schedule=2)
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2)
    state = tx.init(params)
    good = {"w": jnp.ones(512, jnp.bfloat16)}
    bad = {"w": jnp.full(512, jnp.nan, jnp.bfloat16)}
    with standard_promotion():
        step = jax.jit(tx.update)
        updates, state = step(good, state, params)
        assert not np.any(np.asarray(updates["w"], np.float32))  # accumulating
        params_bad, _ = step(bad, state, params)
        assert not np.any(np.asarray(params_bad["w"], np.float32))  # NaN step skipped
        updates, state = step(good, state, params)
    new = optax.apply_updates(params, updates)
    mean = np.asarray(new["w"], np.float64).mean()
    assert abs(mean - 0.999) < 5e-4, mean  # one real step of 1e-3, on average


def test_bfloat16_params_and_state_with_rmsprop_in_nnx():
    from flax import nnx

    with standard_promotion():
        model = nnx.Linear(16, 4, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
        tx = optax.chain(
            rmsprop_jax.rmsprop(
                1e-3, nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16, stochastic_rounding=True
            ),
            SPR(seed=0),
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        x = jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16).reshape(4, 16)
        y = jnp.ones((4, 4), jnp.bfloat16)

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(
                lambda m: jnp.mean((m(x).astype(jnp.float32) - y.astype(jnp.float32)) ** 2)
            )(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]
    assert model.kernel[...].dtype == jnp.bfloat16
