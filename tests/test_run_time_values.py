"""Values known only at run time: one rule for every factory and preset.

- A hyperparameter given to ``optax.inject_hyperparams`` as a Python int, a
  Python float or an array (int or float) acts as the same float, for every
  public factory and every numeric argument it takes.
- A learning rate or weight decay from a schedule (or an injected value) that
  is negative, complex or not finite gives no step: the update is zero and the
  state is kept, the count advances. Eagerly and under ``jit`` alike.
- ``jax.experimental.checkify`` turns that into an error, on request.
- The compiled step holds no host callback, so ``jax.export`` exports it.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion
from jax.experimental import checkify

import rmsprop_jax
from rmsprop_jax import presets

FACTORIES = {
    "rmsprop": (rmsprop_jax.rmsprop, dict(learning_rate=0.1)),
    "scale_by_rms": (rmsprop_jax.scale_by_rms, dict()),
    **{name: (getattr(presets, name), {}) for name in presets.__all__},
}
for _name in ("tensorflow_v1", "sonnet", "hinton_2012"):
    FACTORIES[_name] = (FACTORIES[_name][0], dict(learning_rate=0.1))

# A value of each numeric argument that is valid as an integer.
INTEGERS = {
    "learning_rate": 1,
    "lr": 1,
    "decay": 0,
    "alpha": 0,
    "rho": 0,
    "eps": 1,
    "epsilon": 1,
    "min_squared_gradient": 1,
    "initial_scale": 1,
    "momentum": 0,
    "weight_decay": 1,
    "clipnorm": 1,
    "clipvalue": 1,
    "global_clipnorm": 1,
}


def _numeric_arguments(factory):
    return [name for name in inspect.signature(factory).parameters if name in INTEGERS]


CASES = [
    (name, arg) for name, (factory, _) in FACTORIES.items() for arg in _numeric_arguments(factory)
]
FORMS = {
    "int": lambda x: x,
    "float": float,
    "int32 array": lambda x: jnp.asarray(x, jnp.int32),
    "float32 array": lambda x: jnp.asarray(x, jnp.float32),
}


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.asarray([0.5, -0.25])}


def _grads(i):
    rng = np.random.default_rng(i)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params())


def _run(opt, init_jit, steps=3):
    params = _params()
    with standard_promotion():
        state = jax.jit(opt.init)(params) if init_jit else opt.init(params)
        update = jax.jit(opt.update)
        out = []
        for i in range(steps):
            updates, state = update(_grads(i), state, params)
            out.append(updates)
    return out


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name, arg", CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_injected_number_acts_as_the_same_float(name, arg, form):
    factory, kw = FACTORIES[name]
    value = INTEGERS[arg]
    want = _run(factory(**{**kw, arg: float(value)}), init_jit=False)
    injected = optax.inject_hyperparams(factory)(**{**kw, arg: FORMS[form](value)})
    for init_jit in (False, True):
        got = _run(injected, init_jit)
        for a, b in zip(got, want, strict=True):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-7, err_msg=f"{arg}={form}")


@pytest.mark.parametrize(
    "factory, kw",
    [
        (rmsprop_jax.rmsprop, dict(learning_rate=0.1, decay=0)),
        (rmsprop_jax.rmsprop, dict(learning_rate=0.1, momentum=0)),
        (presets.pytorch, dict(lr=0.1, momentum=0)),
        (presets.sonnet, dict(learning_rate=0.1, momentum=0)),
    ],
)
def test_the_integer_hyperparameters_of_the_report_work(factory, kw):
    params = _params()
    opt = optax.inject_hyperparams(factory)(**kw)
    updates, _ = jax.jit(opt.update)(_grads(0), opt.init(params), params)
    want, _ = factory(**kw).update(_grads(0), factory(**kw).init(params), params)
    for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5)


BAD = {
    "negative": -0.1,
    "nan": float("nan"),
    "inf": float("inf"),
    "complex": 0.1 + 0.1j,
}


def _schedule(bad_at, value, good=0.1):
    """``good`` at every step but ``bad_at``, where it returns ``value``."""

    def schedule(count):
        bad = jnp.asarray(value)
        good_value = jnp.asarray(good, bad.dtype)
        return jnp.where(count == bad_at, bad, good_value)

    return schedule


@pytest.mark.parametrize("which", ["learning_rate", "weight_decay"])
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_a_schedule_out_of_range_gives_no_step(which, bad, jit, momentum):
    kw = dict(learning_rate=0.1, weight_decay=0.1, momentum=momentum)
    kw[which] = _schedule(1, BAD[bad])
    opt = rmsprop_jax.rmsprop(**kw)
    params = _params()
    state = opt.init(params)
    update = jax.jit(opt.update) if jit else opt.update
    with standard_promotion():
        _, state = update(_grads(0), state, params)  # step 1: good
        before = state
        updates, state = update(_grads(1), state, params)  # step 2: the bad value
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates)), updates
    assert int(state.count) == int(before.count) + 1
    for field in ("nu", "trace"):
        for a, b in zip(
            jax.tree.leaves(getattr(state, field)), jax.tree.leaves(getattr(before, field))
        ):
            np.testing.assert_array_equal(a, b)
    with standard_promotion():
        updates, _ = update(_grads(2), state, params)  # step 3: good again
    assert all(np.all(np.isfinite(u)) and np.any(u) for u in jax.tree.leaves(updates))


def test_eager_and_jitted_agree_on_the_run_time_rule():
    opt = rmsprop_jax.rmsprop(_schedule(0, -1.0), momentum=0.9)
    params = _params()
    results = []
    for update in (opt.update, jax.jit(opt.update)):
        state = opt.init(params)
        out = []
        for i in range(3):
            updates, state = update(_grads(i), state, params)
            out.append(updates)
        results.append(out)
    for a, b in zip(*results, strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6)


def test_a_schedule_returning_an_integer_acts_as_the_same_float():
    params = _params()
    got = rmsprop_jax.rmsprop(lambda count: 1, weight_decay=lambda count: jnp.asarray(1))
    want = rmsprop_jax.rmsprop(1.0, weight_decay=1.0)
    for update in (lambda o: o.update, lambda o: jax.jit(o.update)):
        a, _ = update(got)(_grads(0), got.init(params), params)
        b, _ = update(want)(_grads(0), want.init(params), params)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6)


@pytest.mark.parametrize(
    "name, value",
    [
        ("learning_rate", -0.1),
        ("weight_decay", float("nan")),
        ("decay", 1.5),
        ("momentum", 1.0),
        ("eps", -1.0),
    ],
)
def test_an_injected_value_out_of_range_gives_no_step(name, value):
    kw = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.1)
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(**kw)
    params = _params()
    state = opt.init(params)
    step = jax.jit(opt.update)
    _, state = step(_grads(0), state, params)
    before = state.inner_state
    state.hyperparams[name] = jnp.asarray(value, jnp.float32)
    updates, state = step(_grads(1), state, params)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
    for a, b in zip(jax.tree.leaves(state.inner_state.nu), jax.tree.leaves(before.nu)):
        np.testing.assert_array_equal(a, b)
    assert int(state.inner_state.count) == int(before.count) + 1


def test_injected_weight_decay_without_params_gives_no_step_unless_zero():
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1)
    params = _params()
    state = opt.init(params)
    step = jax.jit(lambda g, s: opt.update(g, s))
    updates, state = step(_grads(0), state)  # weight decay 0: no params needed
    assert all(np.any(u) for u in jax.tree.leaves(updates))
    state.hyperparams["weight_decay"] = jnp.asarray(0.1)
    updates, state = step(_grads(1), state)
    assert all(not np.any(u) for u in jax.tree.leaves(updates))


def test_checkify_turns_the_rule_into_an_error():
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1, momentum=0.9)
    params = _params()
    state = opt.init(params)
    checked = jax.jit(checkify.checkify(opt.update, errors=checkify.user_checks))
    error, _ = checked(_grads(0), state, params)
    assert error.get() is None
    state.hyperparams["learning_rate"] = jnp.asarray(-1.0)
    error, (updates, _) = checked(_grads(0), state, params)
    message = error.get()
    assert message is not None and "`learning_rate`=-1" in message, message
    with pytest.raises(checkify.JaxRuntimeError, match="out of range"):
        error.throw()
    # Without checkify the same step makes no step, and raises nothing.
    updates, _ = jax.jit(opt.update)(_grads(0), state, params)
    assert all(not np.any(u) for u in jax.tree.leaves(updates))


def test_checkify_error_for_a_schedule():
    opt = rmsprop_jax.rmsprop(lambda count: -0.1 * (count.astype(jnp.float32) + 1))
    params = _params()
    error, _ = checkify.checkify(opt.update, errors=checkify.user_checks)(
        _grads(0), opt.init(params), params
    )
    assert "`learning_rate`=-0.1" in (error.get() or "")


EXPORTED = [(name, with_params) for name in FACTORIES for with_params in (False, True)]


@pytest.mark.parametrize("name, with_params", EXPORTED, ids=[f"{n}-{w}" for n, w in EXPORTED])
@pytest.mark.parametrize("injected", [False, True], ids=["plain", "injected"])
def test_the_step_exports(name, with_params, injected):
    """``jax.export`` of the jitted ``update`` (no host callback in it), called
    back with the same results; serialized where every state type is ours."""
    factory, kw = FACTORIES[name]
    opt = optax.inject_hyperparams(factory)(**kw) if injected else factory(**kw)
    params = _params()
    with standard_promotion():
        state = opt.init(params)
        if with_params:
            fn = jax.jit(opt.update)
            args = (_grads(0), state, params)
        else:
            fn = jax.jit(lambda g, s: opt.update(g, s))
            args = (_grads(0), state)
        exported = jax.export.export(fn)(*args)
        got = exported.call(*args)
        want = fn(*args)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(x, y)
    assert "callback" not in exported.mlir_module()
    if not injected:  # (optax does not register its own states for serialization)
        restored = jax.export.deserialize(exported.serialize())
        for x, y in zip(jax.tree.leaves(restored.call(*args)), jax.tree.leaves(want)):
            np.testing.assert_array_equal(x, y)
