"""Every standard way of using an Optax transformation, for every public factory.

A table of factories (``rmsprop`` in several configurations, ``scale_by_rms``,
every preset) crossed with the paths users take: ``init`` eagerly or under
``jit``, ``update`` under ``jit`` with and without ``params``,
``optax.inject_hyperparams`` (eager and jitted ``init``), abstract
initialisation from ``jax.ShapeDtypeStruct`` and ``jax.eval_shape``, ``vmap``,
``scan`` and ``grad`` through ``update``. Each path must run and give the same
updates as the plain eager path. Flax NNX, Orbax and meshes follow at the end
(meshes with 8 devices in ``tests/multidevice``).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import finite, standard_promotion

import rmsprop_jax
from rmsprop_jax import presets


def _schedule(count):
    return 0.05 / (1 + 0.1 * count.astype(jnp.float32))


# name -> (factory, keyword arguments). Weight decay is in some: those need
# params in update; the others must work without.
FACTORIES = {
    "rmsprop": (rmsprop_jax.rmsprop, dict(learning_rate=0.05)),
    # (centered with bias correction is left out: its first step divides by a
    # variance that is exactly 0, g^2 - g^2, so it is rounding noise by design.)
    "rmsprop_centered_nesterov": (
        rmsprop_jax.rmsprop,
        dict(learning_rate=0.05, centered=True, momentum=0.9, nesterov=True),
    ),
    "rmsprop_bias_eps_out": (
        rmsprop_jax.rmsprop,
        dict(learning_rate=0.05, bias_correction=True, eps_in_sqrt=False, maximize=True),
    ),
    "rmsprop_weight_decay_schedule": (
        rmsprop_jax.rmsprop,
        dict(learning_rate=_schedule, weight_decay=0.01, momentum=0.5, lr_in_momentum=False),
    ),
    "rmsprop_factored": (
        rmsprop_jax.rmsprop,
        dict(learning_rate=0.05, factored=True, min_dim_size_to_factor=4, momentum=0.9),
    ),
    "rmsprop_bf16_state_sr": (
        rmsprop_jax.rmsprop,
        dict(
            learning_rate=0.05,
            centered=True,
            nu_dtype=jnp.bfloat16,
            mu_dtype=jnp.bfloat16,
            stochastic_rounding=True,
            seed=7,
        ),
    ),
    "scale_by_rms": (rmsprop_jax.scale_by_rms, dict(decay=0.95, eps=1e-6)),
    "scale_by_stddev": (rmsprop_jax.scale_by_rms, dict(centered=True, eps=1e-4)),
    "scale_by_rms_bias": (rmsprop_jax.scale_by_rms, dict(bias_correction=True, decay=0.99)),
    "pytorch": (presets.pytorch, dict(lr=0.05, momentum=0.9, centered=True, weight_decay=0.01)),
    "pytorch_defaults": (presets.pytorch, dict()),
    "keras": (presets.keras, dict(learning_rate=0.01, momentum=0.5, weight_decay=0.01)),
    "keras_clipnorm": (presets.keras, dict(clipnorm=1.0)),
    "tensorflow_v1": (presets.tensorflow_v1, dict(learning_rate=0.01, momentum=0.9)),
    "timm_tf": (presets.timm_tf, dict(lr=0.01, momentum=0.9, weight_decay=1e-4)),
    "sonnet": (presets.sonnet, dict(learning_rate=0.01, centered=True)),
    "lasagne": (presets.lasagne, dict(learning_rate=0.01)),
    "hinton_2012": (presets.hinton_2012, dict(learning_rate=0.01)),
    "graves_2013": (presets.graves_2013, dict()),
    "dqn_nature_2015": (presets.dqn_nature_2015, dict()),
}


def _uses_weight_decay(kw):
    return bool(kw.get("weight_decay"))


def _params():
    return {
        "w": jnp.linspace(-1.0, 1.0, 24).reshape(6, 4),
        "b": jnp.linspace(0.5, 1.0, 4),
        "s": jnp.asarray(0.3),
    }


def _grads(step=0):
    rng = np.random.default_rng(step)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params())


def _close(a, b, rtol=2e-5, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _steps(opt, state, params, n, *, jit=True, with_params=True):
    update = jax.jit(opt.update) if jit else opt.update
    out = []
    for i in range(n):
        updates, state = (
            update(_grads(i), state, params) if with_params else update(_grads(i), state)
        )
        out.append(updates)
    return out, state


def _eager(name, n=3):
    factory, kw = FACTORIES[name]
    opt = factory(**kw)
    params = _params()
    return _steps(opt, opt.init(params), params, n, jit=False)[0]


NAMES = sorted(FACTORIES)


@pytest.fixture(autouse=True, params=[False, True], ids=["x64 off", "x64 on"])
def mode(request):
    """Every path with JAX's 64-bit mode off (the default, what users run) and on."""
    with jax.enable_x64(request.param):
        yield request.param


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("init", ["eager", "jit"])
@pytest.mark.parametrize("with_params", [True, False])
def test_init_and_jitted_update(name, init, with_params):
    factory, kw = FACTORIES[name]
    if not with_params and _uses_weight_decay(kw):
        opt = factory(**kw)
        with pytest.raises(ValueError, match="`params`"):
            opt.update(_grads(), opt.init(_params()))
        return
    opt = factory(**kw)
    params = _params()
    state = opt.init(params) if init == "eager" else jax.jit(opt.init)(params)
    got, _ = _steps(opt, state, params, 3, with_params=with_params)
    for a, b in zip(got, _eager(name), strict=True):
        _close(a, b)


def _injected(name):
    factory, kw = FACTORIES[name]
    return optax.inject_hyperparams(factory)(**kw)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("init", ["eager", "jit"])
@pytest.mark.parametrize("with_params", [True, False])
def test_inject_hyperparams(name, init, with_params):
    factory, kw = FACTORIES[name]
    opt = _injected(name)
    params = _params()
    if init == "jit" and kw.get("factored"):
        # Which leaves are factored is decided from a concrete int: a traced one
        # must be made static, as the error says.
        with pytest.raises(ValueError, match="static_args"):
            jax.jit(opt.init)(params)
        opt = optax.inject_hyperparams(factory, static_args=("min_dim_size_to_factor",))(**kw)
    with standard_promotion():  # inject_hyperparams mixes float32 hyperparameters in
        state = opt.init(params) if init == "eager" else jax.jit(opt.init)(params)
        if not with_params and _uses_weight_decay(kw):
            # An injected weight decay is known only at run time: without params
            # a non-zero one gives no step (the rule for run-time values).
            updates, _ = jax.jit(lambda g, s: opt.update(g, s))(_grads(), state)
            assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
            return
        got, state = _steps(opt, state, params, 3, with_params=with_params)
    # Hyperparameters are held as float32 arrays: agreement to float32 rounding.
    for a, b in zip(got, _eager(name), strict=True):
        _close(a, b, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_abstract_init(name):
    factory, kw = FACTORIES[name]
    opt = factory(**kw)
    params = _params()
    want = jax.tree.map(lambda x: (x.shape, x.dtype), opt.init(params))
    structs = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    from_structs = opt.init(structs)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), from_structs) == want
    assert jax.tree.map(lambda x: (x.shape, x.dtype), jax.eval_shape(opt.init, params)) == want
    # The abstractly made state is a real, usable initial state.
    got, _ = _steps(opt, from_structs, params, 2)
    for a, b in zip(got, _eager(name, 2), strict=True):
        _close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_a_batch_of_runs(name):
    """vmap over independent runs: each member equals its own unbatched run."""
    factory, kw = FACTORIES[name]
    opt = factory(**kw)
    params = _params()
    batch = 3
    stacked = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
    grads = stacked([jax.tree.map(lambda g, i=i: g * (i + 1), _grads()) for i in range(batch)])
    states = jax.vmap(lambda _: opt.init(params))(jnp.arange(batch))
    updates, _ = jax.jit(jax.vmap(opt.update, in_axes=(0, 0, None)))(grads, states, params)
    for i in range(batch):
        one = jax.tree.map(lambda g, i=i: g * (i + 1), _grads())
        want, _ = opt.update(one, opt.init(params), params)
        _close(jax.tree.map(lambda u, i=i: u[i], updates), want)


@pytest.mark.parametrize("name", NAMES)
def test_scan_over_steps(name):
    factory, kw = FACTORIES[name]
    opt = factory(**kw)
    params = _params()
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(i) for i in range(3)])

    def body(state, g):
        updates, state = opt.update(g, state, params)
        return state, updates

    _, updates = jax.jit(lambda s: jax.lax.scan(body, s, grads))(opt.init(params))
    for i, want in enumerate(_eager(name)):
        _close(jax.tree.map(lambda u, i=i: u[i], updates), want)


@pytest.mark.parametrize("name", NAMES)
def test_grad_through_update(name):
    """Meta-gradients: d(loss after two steps)/d(scale of the initial parameters)
    through update is finite, and matches a finite difference (where the state
    is not rounded to bfloat16, which makes the loss a step function)."""
    factory, kw = FACTORIES[name]
    opt = factory(**kw)

    def loss(scale):
        params = jax.tree.map(lambda p: p * scale.astype(p.dtype), _params())
        state = opt.init(params)
        for i in range(2):
            updates, state = opt.update(_grads(i), state, params)
            params = optax.apply_updates(params, updates)
        return sum(jnp.sum(p**2) for p in jax.tree.leaves(params))

    grad = jax.jit(jax.grad(loss))(jnp.float32(1.0))
    assert np.isfinite(grad)
    if "bf16" not in name:
        h = 1e-2
        fd = (loss(jnp.float32(1 + h)) - loss(jnp.float32(1 - h))) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=1e-2)


def test_every_factory_is_in_the_table():
    """The table covers every public factory (a new preset must be added)."""
    covered = {factory for factory, _ in FACTORIES.values()}
    public = {rmsprop_jax.rmsprop, rmsprop_jax.scale_by_rms}
    public |= {getattr(presets, name) for name in presets.__all__}
    assert public <= covered
    for factory in public:  # and each is inject_hyperparams-compatible by signature
        assert inspect.signature(factory).parameters


# --------------------------------------------------------------------------
# Flax NNX and Orbax.


@pytest.mark.parametrize(
    "kw",
    [
        dict(factored=True, min_dim_size_to_factor=4, momentum=0.9),
        dict(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16, centered=True, stochastic_rounding=True),
    ],
    ids=["factored", "bf16_state"],
)
def test_nnx_optimizer(kw):
    from flax import nnx

    with standard_promotion():
        model = nnx.Linear(8, 6, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, rmsprop_jax.rmsprop(0.01, **kw), wrt=nnx.Param)
        x = jnp.linspace(-1, 1, 32).reshape(4, 8)

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer)) for _ in range(20)]
    assert losses[-1] < losses[0]
    state = nnx.state(optimizer)
    assert finite(jax.tree.leaves(state))


@pytest.mark.parametrize(
    "kw",
    [
        dict(factored=True, min_dim_size_to_factor=4, momentum=0.9),
        dict(nu_dtype=jnp.bfloat16, centered=True, stochastic_rounding=True),
    ],
    ids=["factored", "bf16_state"],
)
def test_orbax_round_trip(kw, tmp_path):
    import orbax.checkpoint as ocp

    opt = rmsprop_jax.rmsprop(0.01, **kw)
    params = _params()
    _, state = _steps(opt, opt.init(params), params, 2)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    template = opt.init(params)
    rmsprop_jax.validate_state(checkpointer.metadata(tmp_path / "state"), template)
    restored = checkpointer.restore(tmp_path / "state", template)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    a, _ = opt.update(_grads(5), state, params)
    b, _ = opt.update(_grads(5), restored, params)
    _close(a, b, rtol=0, atol=0)
