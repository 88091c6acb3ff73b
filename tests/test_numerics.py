"""No finite input gives a NaN or Inf (docs/algorithm.md, "differs on purpose")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import presets


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


@pytest.mark.parametrize(
    "eps, eps_in_sqrt",
    [(1.2e-38, True), (1e-8, True), (1e-18, False), (1e-19, False), (1e-8, False)],
)
@pytest.mark.parametrize("momentum", [None, 0.9, 0.9999999])
@pytest.mark.parametrize("lr", [1.0, 1e30, "injected"])
def test_centered_steps_on_the_largest_gradients_stay_finite(eps, eps_in_sqrt, momentum, lr):
    # |g| = 1.8e19: its square (3.2e38) is just finite in float32, and a constant
    # gradient drives the variance to 0, so |s| reaches |g| / sqrt(eps), up to
    # 1.6e38. With numbers for eps, decay and lr the step is bounded statically
    # (or, for lr 1e30 and eps 1e-19, s is clamped); an injected lr is traced.
    # (Not decay 0.5: XLA may factor 0.5 g^2 + 0.5 nu into 0.5 (g^2 + nu), whose
    # sum overflows, freezing the coordinate before its square does.)
    kw = dict(decay=0.6, eps=eps, eps_in_sqrt=eps_in_sqrt, centered=True, momentum=momentum)
    if lr == "injected":
        opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=1.0, **kw)
    else:
        opt = rmsprop_jax.rmsprop(lr, **kw)
    g = jnp.array([1.8e19, -1.8e19, 1.0, 0.0], jnp.float32)
    params = {"w": jnp.zeros(4)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(30):
        updates, state = update({"w": g}, state, params)
        assert _finite(updates) and _finite(state), (updates, state)
    u = np.asarray(updates["w"])
    assert u[0] < 0 < u[1] and u[2] < 0 and u[3] == 0, u


@pytest.mark.parametrize(
    "eps, eps_in_sqrt", [(1.2e-38, True), (1e-8, True), (1e-19, False), (1e-8, False)]
)
@pytest.mark.parametrize("momentum", [None, 0.9999999])
@pytest.mark.parametrize("lr", [1.0, 1e30, "injected"])
def test_factored_steps_on_the_largest_gradients_stay_finite(eps, eps_in_sqrt, momentum, lr):
    """A factored estimate can be far below g^2 (here 0 beside the largest
    gradient whose square is finite, and inf left out of the averages), so
    that only eps bounds |s|: statically where the numbers are known, else by
    the clamp."""
    kw = dict(
        decay=0.6,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
        momentum=momentum,
        factored=True,
        min_dim_size_to_factor=2,
    )
    if lr == "injected":
        opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=1.0, **kw)
    else:
        opt = rmsprop_jax.rmsprop(lr, **kw)
    g = jnp.array([[1.8e19, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1e-30, 1e30]], jnp.float32)
    params = {"w": jnp.zeros((3, 3))}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(10):
        updates, state = update({"w": g}, state, params)
        assert _finite(updates) and _finite(state), (updates, state)
    u = np.asarray(updates["w"])
    assert u[0, 0] < 0 and u[2, 1] < 0 and u[2, 2] == 0 and u[1, 1] == 0, u


@pytest.mark.parametrize("mu_dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("lr", [1e-3, 1e36, 5e36])
@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.999])
@pytest.mark.parametrize("stochastic_rounding", [False, True])
def test_a_narrow_momentum_buffer_stays_finite(mu_dtype, lr, momentum, stochastic_rounding):
    """A bfloat16 (float16) buffer driven to its largest value: stored without
    saturation only where the static bound keeps it in range, else saturated;
    either way finite. Momentum 0.99 is where rounding up at every store could
    grow it by the most while the bound still holds."""
    opt = rmsprop_jax.rmsprop(
        lr,
        decay=0.9,
        momentum=momentum,
        mu_dtype=mu_dtype,
        stochastic_rounding=stochastic_rounding,
    )
    params = {"w": jnp.zeros(4)}
    scales = jnp.array([1.0, -1e-5, 1e5, -1e10], jnp.float32)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for i in range(300):
        # growing tenfold every step, the gradient keeps |s| near its bound
        # 1 / sqrt(1 - decay), and the buffer near lr |s| / (1 - m)
        g = {"w": scales * jnp.float32(10.0 ** (i % 20 - 10))}
        updates, state = update(g, state, params)
        assert _finite(updates) and _finite(state), (i, updates, state)


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


# --------------------------------------------------------------------------
# Valid values at the edge of what float32 holds, and leaves of every kind.


def test_momentum_that_rounds_to_one_in_float32_still_moves_like_optax():
    params = {"w": jnp.linspace(-1, 1, 5)}
    ours, theirs = (
        rmsprop_jax.rmsprop(0.1, momentum=0.99999999),
        optax.rmsprop(0.1, momentum=0.99999999),
    )
    s1, s2 = ours.init(params), theirs.init(params)
    for step in range(5):
        g = {"w": jnp.asarray([1.0, -0.5, 0.25, 2.0, -1.0]) * (step + 1)}
        u1, s1 = ours.update(g, s1, params)
        with jax.numpy_dtype_promotion("standard"):
            u2, s2 = theirs.update(g, s2, params)
        assert np.all(np.asarray(u1["w"]) != 0)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)


def test_decay_that_rounds_to_one_in_float32_with_bias_correction(x64):
    """1 - decay**t would be exactly 0 in float32; the step matches float64."""
    kw = dict(learning_rate=0.1, decay=0.99999999, bias_correction=True)
    g = np.array([0.5, -2.0, 1.0])
    got = []
    for dtype in (jnp.float32, jnp.float64):
        opt = rmsprop_jax.rmsprop(**kw)
        params = {"w": jnp.zeros(3, dtype)}
        state = opt.init(params)
        for _ in range(3):
            updates, state = opt.update({"w": jnp.asarray(g, dtype)}, state, params)
        got.append(np.asarray(updates["w"], np.float64))
    assert np.all(np.isfinite(got[0]))
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5)
    np.testing.assert_allclose(got[1], -0.1 * np.sign(g), rtol=1e-6)  # bias-corrected: g/|g|


@pytest.mark.parametrize("traced", [False, True])
def test_decay_zero_after_an_overflowed_square(traced):
    opt_fn = lambda decay: rmsprop_jax.rmsprop(0.1, decay=decay)
    params = {"w": jnp.ones(2, jnp.bfloat16)}

    def run(decay):
        opt = opt_fn(decay)
        state = opt.init(params)
        out = []
        for g in ([1e30, 1.0], [1.0, 1.0]):
            updates, state = opt.update({"w": jnp.asarray(g, jnp.bfloat16)}, state, params)
            out.append(updates["w"].astype(jnp.float32))
        return out, state

    (first, second), state = jax.jit(run)(jnp.asarray(0.0)) if traced else run(0.0)
    first, second = np.asarray(first), np.asarray(second)
    assert first[0] == 0 and np.isfinite(first).all()
    np.testing.assert_allclose(second, -0.1, rtol=1e-2)  # nu = g^2 again: the coordinate moves
    assert np.isfinite(np.asarray(state.nu["w"])).all()


@pytest.mark.parametrize(
    "kw",
    [
        dict(eps=0.0),
        dict(eps=0.0, eps_in_sqrt=False),
        dict(eps=1e-8, eps_in_sqrt=False),
        dict(eps=0.0, centered=True, momentum=0.9),
        dict(eps=0.0, bias_correction=True),
        dict(eps=0.0, factored=True, min_dim_size_to_factor=2),
    ],
)
def test_meta_gradients_are_finite_where_a_gradient_is_zero(kw):
    """d(update)/d(lr, decay, eps) through update, with coordinates whose gradient
    (and so second moment) is exactly 0."""

    def total(hyper):
        lr, decay, eps = hyper
        opt = rmsprop_jax.rmsprop(lr, decay=decay, **{**kw, "eps": eps + kw["eps"]})
        params = {"w": jnp.ones((2, 3))}
        state = opt.init(params)
        total = 0.0
        for g in ([[0.0, 1.0, 0.0], [0.0, -2.0, 0.0]], [[0.0, 0.5, 0.0], [0.0, 1.0, 0.0]]):
            updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
            total = total + jnp.sum(updates["w"] ** 2)
        return total

    grads = jax.grad(total)((jnp.float32(0.1), jnp.float32(0.9), jnp.float32(0.0)))
    assert all(np.isfinite(np.asarray(x)) for x in grads), grads
    assert float(grads[0]) > 0  # a larger learning rate makes larger updates


def test_integer_boolean_and_python_float_leaves():
    params = {"w": jnp.ones(3), "i": jnp.arange(3), "b": jnp.array([True, False]), "f": 1.0}
    opt = rmsprop_jax.rmsprop(0.1, momentum=0.9, weight_decay=0.1, centered=True)
    state = opt.init(params)
    grads = {"w": jnp.ones(3), "i": jnp.arange(3), "b": jnp.array([True, True]), "f": 0.5}
    updates, new_state = jax.jit(opt.update)(grads, state, params)
    assert updates["i"].dtype == jnp.int32 and not np.any(np.asarray(updates["i"]))
    assert updates["b"].dtype == jnp.bool_ and not np.any(np.asarray(updates["b"]))
    assert float(updates["f"]) < 0 and float(updates["w"][0]) < 0
    for field in ("nu", "mu", "trace"):  # untrained leaves keep their state
        np.testing.assert_array_equal(getattr(new_state, field)["i"], getattr(state, field)["i"])
    # float0 gradients, as jax.grad(allow_int=True) gives for integer leaves
    _, float0_grads = jax.value_and_grad(lambda p: jnp.sum(p["w"]), allow_int=True)(params)
    updates, _ = opt.update(float0_grads, state, params)
    assert updates["i"].dtype == jax.dtypes.float0


def test_validate_state_accepts_a_python_int_count():
    params = {"w": jnp.ones(3)}
    opt = rmsprop_jax.rmsprop(0.1)
    state = opt.init(params)._replace(count=3)
    assert rmsprop_jax.validate_state(state, opt.init(params)) is state
    _, state = opt.update(params, state)
    assert int(state.count) == 4


@pytest.mark.parametrize("nu_dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("decay", [0.9, 0.0])
def test_factored_factors_stored_narrow_stay_finite(nu_dtype, decay):
    """A square whose average overflows a float16 factor (900^2 > 65504)
    saturates the factor instead of storing inf, which would make every later
    estimate inf / inf = NaN."""
    opt = rmsprop_jax.rmsprop(
        0.1, factored=True, min_dim_size_to_factor=2, nu_dtype=nu_dtype, decay=decay
    )
    params = {"w": jnp.ones((3, 3))}
    state = opt.init(params)
    for g in (900.0, 1.0, 1.0, -2.0):
        updates, state = opt.update({"w": jnp.full((3, 3), g)}, state, params)
        assert np.all(np.isfinite(updates["w"])) and np.all(np.asarray(updates["w"]) != 0), g
        for x in jax.tree.leaves(state.nu):
            assert np.all(np.isfinite(np.asarray(x, np.float32))), (g, state.nu)


@pytest.mark.parametrize(
    "clip", [dict(clipnorm=1.0), dict(global_clipnorm=1.0), dict(clipvalue=1.0)]
)
@pytest.mark.parametrize("all_zero", [False, True])
def test_meta_gradients_through_keras_clipping_with_zero_gradients(clip, all_zero):
    """d(loss after 3 steps)/d(learning rate) through presets.keras' clipping,
    where a leaf's gradient (or every gradient) is exactly zero: the norm's
    derivative at 0 would be inf, and 0 * inf NaN."""
    params = {"w": jnp.ones(3), "z": jnp.ones(2)}

    def loss_after(lr):
        opt = presets.keras(lr, **clip)
        state, q = opt.init(params), params
        for _ in range(3):
            g = {"w": (0.0 if all_zero else 2.0) * q["w"], "z": 0.0 * q["z"]}
            updates, state = opt.update(g, state, q)
            q = optax.apply_updates(q, updates)
        return jnp.sum(q["w"] ** 2) + jnp.sum(q["z"])

    grad = jax.grad(loss_after)(jnp.float32(0.1))
    assert np.isfinite(grad), grad
    if not all_zero:
        assert float(grad) < 0  # a larger rate shrinks w faster


def test_prng_key_and_float0_leaves_pass_through():
    """A PRNG key among the parameters gets placeholder state, its float0
    gradient (jax.grad(allow_int=True)) a float0 update; init runs eagerly, under
    jit and from ShapeDtypeStruct."""
    params = {"w": jnp.ones(3), "rng": jax.random.key(0), "old": jax.random.PRNGKey(1)}
    opt = rmsprop_jax.rmsprop(0.1, momentum=0.9, weight_decay=0.1)
    for state in (
        opt.init(params),
        jax.jit(opt.init)(params),
        opt.init(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)),
    ):
        assert jax.tree.structure(state.nu) == jax.tree.structure(params)
    state = opt.init(params)
    _, grads = jax.value_and_grad(lambda p: jnp.sum(p["w"] ** 2), allow_int=True)(params)
    assert grads["rng"].dtype == jax.dtypes.float0
    for update in (opt.update, jax.jit(opt.update)):
        updates, new_state = update(grads, state, params)
        assert updates["rng"].dtype == jax.dtypes.float0
        assert updates["old"].dtype == jax.dtypes.float0  # a uint32 key's gradient
        assert float(updates["w"][0]) < 0
        np.testing.assert_array_equal(new_state.nu["rng"], state.nu["rng"])


def test_zero_size_leaves():
    params = {"e": jnp.ones((0, 3)), "w": jnp.ones(2), "c": jnp.ones((2, 0), jnp.complex64)}
    for kw in (
        dict(),
        dict(centered=True, momentum=0.9),
        dict(factored=True, min_dim_size_to_factor=1),
        dict(nu_dtype=jnp.bfloat16, stochastic_rounding=True),
        dict(
            split_complex=True,
            weight_decay=0.1,
            weight_decay_mask={"e": True, "w": False, "c": jnp.ones((2, 0), bool)},
        ),
    ):
        opt = rmsprop_jax.rmsprop(0.1, **kw)
        updates, _ = jax.jit(opt.update)(params, opt.init(params), params)
        assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params), kw
