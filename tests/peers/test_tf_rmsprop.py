"""TensorFlow 1's RMSPropOptimizer tests, ported to rmsprop_jax.presets.tensorflow_v1.

Source: tensorflow/tensorflow, ``tensorflow/python/training/rmsprop_test.py``,
class ``RMSPropOptimizerTest``. TensorFlow is not installed in the default test
environment, so the dense cases run against a float64 NumPy reference written
here from the equations that test states (mean square starting at one, eps
inside the root, the learning rate inside the momentum buffer), keeping, as
TensorFlow does, the parameters in their own dtype after every step. Golden
values and tolerances are TensorFlow's (``assertAllCloseAccordingToType``:
1e-6 for float32, 1e-3 for float16). ``test_reference_matches_tensorflow``
checks the reference itself against TensorFlow where it is installed
(``pytest -m tensorflow``). Cases that do not apply (sparse updates, resource
variables as such) are listed in ``NOT_APPLICABLE.md``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import state_field

from rmsprop_jax import presets

# _TEST_PARAM_VALUES: learning_rate, decay, momentum, epsilon, centered. The
# peer's list also has two use_resource=True rows that repeat the first two
# rows' numbers with another variable class; they are not repeated here.
DENSE_CONFIGS = [
    (0.5, 0.9, 0.0, 1e-3, True),
    (0.5, 0.9, 0.0, 1e-3, False),
    (0.1, 0.9, 0.0, 1e-3, True),
    (0.5, 0.95, 0.0, 1e-3, False),
    (0.5, 0.95, 0.0, 1e-5, True),
    (0.5, 0.95, 0.9, 1e-5, True),
]
# _DATA_TYPES, with assertAllCloseAccordingToType's tolerance for each.
DTYPES = {"float16": 1e-3, "float32": 1e-6}

# testDense's two variables and their constant gradients.
VARS = (np.array([1.0, 2.0]), np.array([3.0, 4.0]))
GRADS = (np.array([0.1, 0.2]), np.array([0.01, 0.2]))


def tf1_reference(var, grad, steps, learning_rate, decay, momentum, epsilon, centered, dtype):
    """TensorFlow 1's RMSprop in float64 for one variable and a constant
    gradient; the variable is rounded to ``dtype`` after each step, as its
    storage is. Returns, for each step, the variable and the three slots."""
    var = np.asarray(var, dtype).astype(np.float64)
    g = np.asarray(grad, dtype).astype(np.float64)
    rms, mg, mom = np.ones_like(var), np.zeros_like(var), np.zeros_like(var)
    out = []
    for _ in range(steps):
        rms = decay * rms + (1 - decay) * g * g
        denominator = rms + epsilon
        if centered:
            mg = decay * mg + (1 - decay) * g
            denominator = denominator - mg * mg
        mom = momentum * mom + learning_rate * g / np.sqrt(denominator)
        var = (var - mom).astype(dtype).astype(np.float64)
        out.append(dict(var=var, rms=rms, mg=mg, mom=mom))
    return out


def run_preset(opt, dtype, steps, grads=GRADS, start=VARS):
    """Steps the preset on the two variables; returns (params, updates, state) per step."""
    params = tuple(jnp.asarray(v, dtype) for v in start)
    grads = tuple(jnp.asarray(g, dtype) for g in grads)
    state = opt.init(params)
    out = []
    for _ in range(steps):
        # Eager: a jitted update would compile once per configuration.
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append((params, updates, state))
    return out


def close(got, want, tol, what):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol, err_msg=what)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize(
    ("learning_rate", "decay", "momentum", "epsilon", "centered"), DENSE_CONFIGS
)
def test_dense(learning_rate, decay, momentum, epsilon, centered, dtype):
    """RMSPropOptimizerTest.testDense: four steps; every slot and variable checked."""
    tol = DTYPES[dtype]
    kw = dict(
        learning_rate=learning_rate,
        decay=decay,
        momentum=momentum,
        epsilon=epsilon,
        centered=centered,
    )
    got = run_preset(presets.tensorflow_v1(**kw), dtype, steps=4)
    want = [tf1_reference(v, g, 4, **kw, dtype=dtype) for v, g in zip(VARS, GRADS)]
    for t, (params, updates, state) in enumerate(got):
        for i in range(2):
            ref = want[i][t]
            where = f"step {t + 1}, var{i}"
            close(params[i], ref["var"], tol, f"var, {where}")
            close(state_field(state, "nu")[i], ref["rms"], tol, f"rms, {where}")
            # The mean gradient exists exactly when centered (the peer checks
            # the "mg" slot is None otherwise).
            mu = state_field(state, "mu")
            assert (mu is not None) == centered
            if centered:
                close(mu[i], ref["mg"], tol, f"mg, {where}")
            # TensorFlow's momentum slot holds the step (var -= mom); the
            # library's buffer holds the update, minus the step, as optax's
            # trace does. At momentum 0 TensorFlow still keeps the slot.
            trace = state_field(state, "trace")
            source = trace[i] if trace is not None else updates[i]
            mom = -np.asarray(source, np.float64)
            close(mom, ref["mom"], tol, f"mom, {where}")


# RMSPropOptimizerTest.testMinimizeSparseResourceVariable and ...Centered:
# one step on loss = (embedding_lookup([var0], [0]) @ x)^2 from var0 = [[1, 2]].
# The lookup of the only row is var0 itself, so the gradient is dense.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("epsilon", "centered", "want"),
    [(0.0, False, [[0.0, 1.0]]), (1.0, True, [[-111.0, -138.0]])],
    ids=["testMinimizeSparseResourceVariable", "testMinimizeSparseResourceVariableCentered"],
)
def test_minimize_one_row_embedding(epsilon, centered, want, dtype, x64):
    var0 = jnp.array([[1.0, 2.0]], dtype)
    x = jnp.array([[4.0], [5.0]], dtype)
    loss = lambda v: jnp.sum((v[jnp.array([0])] @ x) ** 2)
    opt = presets.tensorflow_v1(
        learning_rate=1.0, decay=0.0, momentum=0.0, epsilon=epsilon, centered=centered
    )
    step = lambda v: optax.apply_updates(v, opt.update(jax.grad(loss)(v), opt.init(v), v)[0])
    after = jax.jit(step)(var0)
    assert after.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(after, want, rtol=1e-6, atol=0.01)


# testWithoutMomentum and testWithMomentum: two steps with TensorFlow's
# closed-form golden values.
G0, G1 = np.array([0.1, 0.1]), np.array([0.01, 0.01])


def golden_without_momentum():
    """Per step: (rms0, rms1, var0, var1) for lr=2, decay=0.9, epsilon=1."""
    rms0 = [0.901, 0.901 * 0.9 + 0.001]
    rms1 = [0.90001, 0.90001 * 0.9 + 1e-5]
    step0 = [0.1 * 2.0 / math.sqrt(r + 1.0) for r in rms0]
    step1 = [0.01 * 2.0 / math.sqrt(r + 1.0) for r in rms1]
    var0 = [np.array([1.0, 2.0]) - sum(step0[: t + 1]) for t in range(2)]
    var1 = [np.array([3.0, 4.0]) - sum(step1[: t + 1]) for t in range(2)]
    return [(rms0[t], rms1[t], var0[t], var1[t]) for t in range(2)]


def check_without_momentum(got, dtype, check_rms=True):
    tol = DTYPES[dtype]
    for t, ((params, _, state), (rms0, rms1, var0, var1)) in enumerate(
        zip(got, golden_without_momentum(), strict=True)
    ):
        if check_rms:
            close(state_field(state, "nu")[0], [rms0] * 2, tol, f"rms0, step {t + 1}")
            close(state_field(state, "nu")[1], [rms1] * 2, tol, f"rms1, step {t + 1}")
        close(params[0], var0, tol, f"var0, step {t + 1}")
        close(params[1], var1, tol, f"var1, step {t + 1}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_without_momentum(dtype):
    opt = presets.tensorflow_v1(learning_rate=2.0, decay=0.9, momentum=0.0, epsilon=1.0)
    check_without_momentum(run_preset(opt, dtype, steps=2, grads=(G0, G1)), dtype)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_with_momentum(dtype):
    tol = DTYPES[dtype]
    opt = presets.tensorflow_v1(learning_rate=2.0, decay=0.9, momentum=0.5, epsilon=1e-5)
    got = run_preset(opt, dtype, steps=2, grads=(G0, G1))
    rms0 = [0.901, 0.901 * 0.9 + 0.001]
    rms1 = [0.90001, 0.90001 * 0.9 + 1e-5]
    first0, first1 = 0.1 * 2.0 / math.sqrt(0.901 + 1e-5), 0.01 * 2.0 / math.sqrt(0.90001 + 1e-5)
    mom0 = [first0, 0.5 * first0 + 0.1 * 2.0 / math.sqrt(0.901 * 0.9 + 0.001 + 1e-5)]
    mom1 = [first1, 0.5 * first1 + 0.01 * 2.0 / math.sqrt(0.90001 * 0.9 + 2e-5)]
    var0 = [np.array([1.0, 2.0]) - first0, np.array([1.0, 2.0]) - first0 - mom0[1]]
    var1 = [np.array([3.0, 4.0]) - first1, np.array([3.0, 4.0]) - first1 - mom1[1]]
    for t, (params, _, state) in enumerate(got):
        where = f"step {t + 1}"
        close(state_field(state, "nu")[0], [rms0[t]] * 2, tol, f"rms0, {where}")
        close(state_field(state, "nu")[1], [rms1[t]] * 2, tol, f"rms1, {where}")
        # (the library's buffer is minus TensorFlow's momentum slot)
        close(-state_field(state, "trace")[0], [mom0[t]] * 2, tol, f"mom0, {where}")
        close(-state_field(state, "trace")[1], [mom1[t]] * 2, tol, f"mom1, {where}")
        close(params[0], var0[t], tol, f"var0, {where}")
        close(params[1], var1[t], tol, f"var1, {where}")


# testCallableParams: TensorFlow takes zero-argument callables for every
# hyperparameter. Here the learning rate is a schedule (a callable of the step
# count), and all four hyperparameters are injected arrays through
# optax.inject_hyperparams, optax's way to change them between steps. The
# golden values are testWithoutMomentum's (the peer checks the variables only).
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_callable_params(dtype):
    schedule = presets.tensorflow_v1(
        learning_rate=lambda count: jnp.asarray(2.0), decay=0.9, momentum=0.0, epsilon=1.0
    )
    check_without_momentum(run_preset(schedule, dtype, steps=2, grads=(G0, G1)), dtype, False)

    hyper = dict(learning_rate=2.0, decay=0.9, momentum=0.0, epsilon=1.0)
    params = tuple(jnp.asarray(v, dtype) for v in VARS)
    hyperparam_dtype = None
    if jnp.dtype(dtype) == jnp.float16:
        # inject_hyperparams would store decay in float16, which cannot hold
        # 1 - decay precisely: refused, with the fix in the message.
        with pytest.raises(ValueError, match="hyperparam_dtype"):
            optax.inject_hyperparams(presets.tensorflow_v1)(**hyper).init(params)
        hyperparam_dtype = jnp.float32
    injected = optax.inject_hyperparams(presets.tensorflow_v1, hyperparam_dtype=hyperparam_dtype)(
        **hyper
    )
    grads = tuple(jnp.asarray(g, dtype) for g in (G0, G1))
    state = injected.init(params)
    got = []
    for _ in range(2):  # TensorFlow's test runs eagerly; so does this update
        updates, state = injected.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        got.append((params, updates, state))
    check_without_momentum(got, dtype, False)


# --------------------------------------------------------------------------
# The reference above, checked against TensorFlow itself where installed.


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    ("learning_rate", "decay", "momentum", "epsilon", "centered"), DENSE_CONFIGS
)
def test_reference_matches_tensorflow(learning_rate, decay, momentum, epsilon, centered):
    tf = pytest.importorskip(
        "tensorflow", reason="tensorflow-cpu is not installed; run `make test-tensorflow`"
    )
    kw = dict(
        learning_rate=learning_rate,
        decay=decay,
        momentum=momentum,
        epsilon=epsilon,
        centered=centered,
    )
    variables = [tf.Variable(np.asarray(v, np.float32)) for v in VARS]
    grads = [tf.constant(np.asarray(g, np.float32)) for g in GRADS]
    opt = tf.compat.v1.train.RMSPropOptimizer(**kw)
    want = [tf1_reference(v, g, 4, **kw, dtype="float32") for v, g in zip(VARS, GRADS)]
    for t in range(4):
        opt.apply_gradients(zip(grads, variables))
        for i, var in enumerate(variables):
            ref = want[i][t]
            close(var.numpy(), ref["var"], 1e-6, f"var{i}, step {t + 1}")
            close(opt.get_slot(var, "rms").numpy(), ref["rms"], 1e-6, "rms")
            close(opt.get_slot(var, "momentum").numpy(), ref["mom"], 1e-6, "mom")
            if centered:
                close(opt.get_slot(var, "mg").numpy(), ref["mg"], 1e-6, "mg")
