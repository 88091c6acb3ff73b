"""optax's generic optimizer tests, ported to rmsprop_jax.

Source: google-deepmind/optax, ``optax/_src/alias_test.py`` at v0.2.8 (the
installed optax), class ``AliasTest``. Every test there that is parameterized
over ``_OPTIMIZERS_UNDER_TEST`` runs here on that list's two RMSprop entries
(``rmsprop(learning_rate=5e-3)`` and ``rmsprop(learning_rate=5e-3,
momentum=0.9)``) and, beyond the peer, on the PyTorch preset at the same
learning rate; the inject_hyperparams case also on every other public factory.
``test_explicit_dtype`` (in optax: SGD and Adam only) is adapted to RMSprop's
``nu_dtype``/``mu_dtype``. The peer cases that do not apply are listed in
``NOT_APPLICABLE.md``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import assert_trees_close, state_field

import rmsprop_jax
from rmsprop_jax import presets

# (factory, keyword arguments). The first two are optax's own entries of
# _OPTIMIZERS_UNDER_TEST; the PyTorch preset (eps outside the root, the
# learning rate outside the momentum buffer, complex numbers split) is the same
# case at the same rate.
CASES = {
    "rmsprop": (rmsprop_jax.rmsprop, dict(learning_rate=5e-3)),
    "rmsprop_momentum": (rmsprop_jax.rmsprop, dict(learning_rate=5e-3, momentum=0.9)),
    "pytorch": (presets.pytorch, dict(lr=5e-3)),
}


def make(name):
    factory, kwargs = CASES[name]
    return factory(**kwargs)


def abs_sq(x):
    return jnp.real(x * jnp.conj(x))


# The two targets of alias_test.py: _setup_parabola and _setup_rosenbrock.
def parabola(dtype):
    start = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
    optimum = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
    if jnp.iscomplexobj(start):
        optimum = optimum * (1 + 1j)
    return start, optimum, lambda p: jnp.sum(abs_sq(p - optimum))


def rosenbrock(dtype):
    a, b = (1.0 + 1.0j if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0), 100.0
    start = jnp.zeros(2, dtype)
    optimum = jnp.array([a, a**2], dtype=dtype)
    return start, optimum, lambda p: abs_sq(a - p[0]) + b * abs_sq(p[1] - p[0] ** 2)


def descent_step(opt, objective):
    """One step on the objective; complex gradients are conjugated, as in the peer."""

    def step(params, state):
        grads = jax.tree.map(jnp.conj, jax.grad(objective)(params))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


# --------------------------------------------------------------------------
# AliasTest.test_optimization: 10,000 steps reach the optimum to 3e-2; the
# state survives tree_map_params; the step does not recompile.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("target", [parabola, rosenbrock])
@pytest.mark.parametrize("name", sorted(CASES))
def test_optimization(name, target, dtype):
    opt = make(name)
    start, optimum, objective = target(dtype)
    step = descent_step(opt, objective)

    # The 10,000 steps run as one scan (the peer loops in Python over a jitted
    # step; the arithmetic is the same).
    @jax.jit
    def run(params, state):
        body = lambda carry, _: (step(*carry), None)
        return jax.lax.scan(body, (params, state), length=10_000)[0]

    params, _ = run(start, opt.init(start))
    assert_trees_close(params, optimum, rtol=3e-2, atol=3e-2, what=name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimization_state_survives_tree_map_params(name):
    """The peer's no-op ``tree_map_params`` subtest, plus a doubling: only the
    parameter-shaped fields double (the step count is not parameter-shaped)."""
    opt = make(name)
    start, _, objective = rosenbrock(jnp.float32)
    _, state = jax.jit(descent_step(opt, objective))(start, opt.init(start))
    same = optax.tree_utils.tree_map_params(opt, lambda v: v, state)
    assert_trees_close(same, state, rtol=0, what="identity tree_map_params")
    doubled = optax.tree_utils.tree_map_params(opt, lambda v: 2 * v, state)
    assert_trees_close(state_field(doubled, "nu"), 2 * state_field(state, "nu"), rtol=0)
    assert state_field(doubled, "count") == state_field(state, "count") == 1


@pytest.mark.parametrize("name", ["rmsprop", "rmsprop_momentum"])
def test_optimization_does_not_recompile_on_the_second_call(name):
    opt = make(name)
    start, _, objective = parabola(jnp.float32)
    traces = []

    def traced(params, state):
        traces.append(1)
        return descent_step(opt, objective)(params, state)

    step = jax.jit(traced)
    params, state = step(start, opt.init(start))
    params, state = step(params, state)
    assert len(traces) == 1


# --------------------------------------------------------------------------
# AliasTest.test_optimizers_accept_extra_args


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizers_accept_extra_args(name):
    opt = make(name)
    start, _, objective = rosenbrock(jnp.float32)

    @jax.jit
    def two_steps(params, state):
        grads = jax.grad(objective)(params)
        extra = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
        _, s1 = opt.update(grads, state, params, **extra)
        u2, s2 = opt.update(grads, s1, params, **extra)
        plain = opt.update(grads, opt.update(grads, state, params)[1], params)
        return (u2, s2), plain

    with_extra, plain = two_steps(start, opt.init(start))
    assert_trees_close(with_extra, plain, rtol=0, what="extra arguments change nothing")


# --------------------------------------------------------------------------
# AliasTest.test_optimizers_can_be_wrapped_in_inject_hyperparams: jitted init,
# jitted update with params; updates to rtol 1e-3 and the inner state to 1e-4.


def inject_inputs():
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
    return params, grads


def compare_states(injected_inner, plain, rtol):
    """The fields of the plain state, found in the injected one. The injected
    state may carry a momentum buffer the plain one has not (a traced momentum
    of 0 cannot be told from a nonzero one), so fields are compared by name."""
    for field in ("count", "nu", "mu", "trace"):
        want = state_field(plain, field)
        if want is not None:
            assert_trees_close(state_field(injected_inner, field), want, rtol=rtol, what=field)


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizers_can_be_wrapped_in_inject_hyperparams(name):
    factory, kwargs = CASES[name]
    params, grads = inject_inputs()

    def init_and_update(opt):
        # init and update both under jit, as in the peer (here one program).
        return jax.jit(lambda g, p: opt.update(g, opt.init(p), p))(grads, params)

    updates, new_state = init_and_update(factory(**kwargs))
    updates_inj, new_state_inj = init_and_update(optax.inject_hyperparams(factory)(**kwargs))
    assert_trees_close(updates_inj, updates, rtol=1e-3)
    compare_states(new_state_inj.inner_state, new_state, rtol=1e-4)


# Beyond the peer: every public factory, with init run eagerly or under jit,
# and the update under jit with or without params (no weight decay is asked
# for, so params are optional). Each variant's updates and state must equal
# the un-injected transform's.

# name: (factory, kwargs)
FACTORIES = {
    "rmsprop": (rmsprop_jax.rmsprop, dict(learning_rate=0.1)),
    "rmsprop_bias_correction": (
        rmsprop_jax.rmsprop,
        dict(learning_rate=0.1, bias_correction=True),
    ),
    "scale_by_rms": (rmsprop_jax.scale_by_rms, dict(centered=True)),
    "pytorch": (
        presets.pytorch,
        dict(lr=0.1),
    ),
    "keras": (
        presets.keras,
        dict(learning_rate=0.1),
    ),
    "keras_clipnorm": (
        presets.keras,
        dict(learning_rate=0.1, clipnorm=1.0),
    ),
    "tensorflow_v1": (
        presets.tensorflow_v1,
        dict(learning_rate=0.1),
    ),
    "timm_tf": (
        presets.timm_tf,
        dict(lr=0.1),
    ),
    "sonnet": (
        presets.sonnet,
        dict(learning_rate=0.1),
    ),
    "lasagne": (presets.lasagne, dict(learning_rate=0.1)),
    "hinton_2012": (presets.hinton_2012, dict(learning_rate=0.1)),
    "graves_2013": (presets.graves_2013, dict()),
    "dqn_nature_2015": (presets.dqn_nature_2015, dict()),
}

# eager: eager init, update with params; jit: jitted init, update with params;
# no_params: eager init, update without params.
VARIANTS = ("eager", "jit", "no_params")


def injection_cases():
    for name in FACTORIES:
        for variant in VARIANTS:
            yield pytest.param(name, variant, id=f"{name}-{variant}")


def small_inputs():
    return jnp.array([-1.0, 0.5, 2.0]), jnp.array([1.0, -2.0, 0.25])


@functools.cache
def plain_step(name):
    factory, kwargs = FACTORIES[name]
    params, grads = small_inputs()
    opt = factory(**kwargs)
    return opt.update(grads, opt.init(params), params)


@pytest.mark.parametrize(("name", "variant"), list(injection_cases()))
def test_every_factory_works_inside_inject_hyperparams(name, variant):
    factory, kwargs = FACTORIES[name]
    params, grads = small_inputs()
    opt = optax.inject_hyperparams(factory)(**kwargs)
    state = (jax.jit(opt.init) if variant == "jit" else opt.init)(params)
    updates, new_state = jax.jit(opt.update)(
        grads, state, None if variant == "no_params" else params
    )
    want_updates, want_state = plain_step(name)
    # Injected hyperparameters are float32 arrays, no longer Python numbers: a
    # bias correction 1 - decay**t may then be computed another way, which in
    # float32 changes it by a few 1e-7 relative; hence 1e-5, not 1e-6.
    assert_trees_close(updates, want_updates, rtol=1e-5, atol=1e-7)
    compare_states(new_state.inner_state, want_state, rtol=1e-5)


# --------------------------------------------------------------------------
# AliasTest.test_explicit_dtype, adapted: optax checks SGD's accumulator_dtype
# and Adam's mu_dtype over params_dtype x state_dtype in (bfloat16, float32,
# complex64, None). For RMSprop the explicit dtypes are nu_dtype and mu_dtype
# (mu and the momentum buffer). Unlike optax, a None state dtype means the
# parameter's real dtype promoted to at least float32, and a complex state
# dtype is refused.

DTYPES = ("bfloat16", "float32", "complex64", None)


@pytest.mark.parametrize("state_dtype", DTYPES)
@pytest.mark.parametrize("params_dtype", DTYPES)
def test_explicit_dtype(params_dtype, state_dtype):
    make_opt = functools.partial(
        rmsprop_jax.rmsprop, 0.1, centered=True, momentum=0.9, nu_dtype=state_dtype
    )
    if state_dtype == "complex64":
        with pytest.raises(ValueError, match="`nu_dtype`"):
            make_opt(mu_dtype=state_dtype)
        with pytest.raises(ValueError, match="`mu_dtype`"):
            rmsprop_jax.rmsprop(0.1, mu_dtype=state_dtype)
        return
    opt = make_opt(mu_dtype=state_dtype)
    params = jnp.array([0.0, 0.0], dtype=params_dtype)
    state = opt.init(params)
    # Without a state dtype, bfloat16, float32 and complex64 parameters all get
    # float32. The mean and the momentum buffer of complex parameters are
    # complex: complex64 (there is no complex bfloat16).
    real = jnp.dtype(jnp.float32 if state_dtype is None else state_dtype)
    assert state_field(state, "nu").dtype == real
    mean = jnp.dtype(jnp.complex64) if params_dtype == "complex64" else real
    assert state_field(state, "mu").dtype == mean
    assert state_field(state, "trace").dtype == mean


# --------------------------------------------------------------------------
# AliasTest.test_preserve_dtype: updates come out in the gradients' dtype.


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_preserve_dtype(name, dtype):
    opt = make(name)
    params = jnp.array([1.0, 2.0], dtype=dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(grads, params)
    assert updates.dtype == grads.dtype


# --------------------------------------------------------------------------
# AliasTest.test_state_shape_dtype_shard_stability: inside lax.cond, the
# update's branch and the identity branch must agree on every type, and the
# parameters keep their dtype.


STABILITY_DTYPES = [
    jnp.float16,
    jnp.bfloat16,
    jnp.float32,
    jnp.float64,
    jnp.complex64,
    jnp.complex128,
]


# The momentum case has every state field of the plain one and more: it runs
# every dtype; the PyTorch preset (complex numbers split) the complex one.
@pytest.mark.parametrize(
    ("name", "dtype"),
    [("rmsprop_momentum", d) for d in STABILITY_DTYPES] + [("pytorch", jnp.complex64)],
    ids=lambda v: v if isinstance(v, str) else jnp.dtype(v).name,
)
def test_state_shape_dtype_shard_stability(name, dtype):
    wide = jnp.dtype(dtype) in (jnp.dtype(jnp.float64), jnp.dtype(jnp.complex128))
    with jax.enable_x64(wide):
        opt = make(name)
        start, _, objective = parabola(dtype)

        # The peer draws its coin with jax.random inside the step; a coin
        # passed in as an argument equally keeps XLA from folding either cond.
        @jax.jit
        def step(params, state, take_update, keep_old):
            grads = jax.tree.map(jnp.conj, jax.grad(objective)(params))
            updates, new_state = jax.lax.cond(
                take_update, lambda: opt.update(grads, state, params), lambda: (params, state)
            )
            # The peer picks the next state between the old and the new one
            # with a second cond outside the step; here in the same program.
            kept = jax.lax.cond(keep_old, lambda: state, lambda: new_state)
            return optax.apply_updates(params, updates), kept

        params, state = start, opt.init(start)
        for take_update, keep_old in ((True, False), (False, True), (True, True)):
            params, state = step(params, state, jnp.asarray(take_update), jnp.asarray(keep_old))
            assert params.dtype == jnp.dtype(dtype)
        assert jnp.all(jnp.isfinite(params))


# --------------------------------------------------------------------------
# AliasTest.test_gradient_accumulation: inside optax.MultiSteps(every 4), the
# first update is exactly zero.


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_accumulation(name, dtype):
    opt = optax.MultiSteps(make(name), every_k_schedule=4)
    params = jnp.array([1.0, 2.0], dtype=dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    # optax's MultiSteps mixes int32 and float32: standard promotion for it.
    with jax.numpy_dtype_promotion("standard"):
        updates = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(grads, params)
    assert updates.dtype == grads.dtype
    np.testing.assert_array_equal(np.asarray(updates, np.float32), np.zeros(2, np.float32))
