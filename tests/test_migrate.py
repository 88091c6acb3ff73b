"""Moving a run's optimizer state into rmsprop_jax (``migrate.from_*``) and back.

A run is started in the original (PyTorch, Keras 3 on its JAX backend, or the
float64 NumPy reference of TensorFlow 1), its state moved, and both sides
continue on the same gradients: the parameters must agree after every step,
float64 to 1e-12 and float32 to 5e-5 of the distance moved since the move.
A negative control continues from a fresh ``init`` instead, which must be
visibly off, so that agreement is not vacuous. Round trips must give the
original's state back exactly.

The JAX tree is laid out as a flax model would be: the dense kernel is the
transpose of PyTorch's weight, and ``jax.tree.leaves`` order (alphabetical)
is not the original's, so ``order`` and ``layout`` are exercised throughout.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_originals as originals
from helpers import TORCH_MISSING, relative_error, standard_promotion

import rmsprop_jax
from rmsprop_jax import migrate, presets

BEFORE, AFTER = 6, 6  # steps in the original before the move, and on both sides after it
TOL = {"float64": 1e-12, "float32": 5e-5}
# The original's parameters in its order, as (JAX path, JAX layout from the original's).
ORDER = ["dense/kernel", "dense/bias", "scale"]
LAYOUT = {"dense/kernel": np.transpose}

CONFIGS = {
    "plain": {},
    "momentum": dict(momentum=0.9),
    "centered": dict(centered=True),
    "centered_momentum": dict(centered=True, momentum=0.9),
    "weight_decay": dict(weight_decay=0.1, momentum=0.5),
}


def start(seed=0):
    """The original's parameters, in its order and layout: a (4, 3) weight, a bias, a scalar."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 3)), rng.normal(size=(4,)), rng.normal(size=())]


def gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        scale = 10.0 ** rng.uniform(-1, 0.5)
        out.append([scale * rng.normal(size=s) for s in [(4, 3), (4,), ()]])
    return out


def as_tree(arrays, dtype=None, transpose=True):
    """The original's list of arrays as the JAX tree (the kernel transposed), of
    jax arrays of ``dtype``, or of float64 NumPy arrays without one."""
    w, b, s = (np.array(x, np.float64) for x in arrays)
    tree = {"dense": {"kernel": w.T if transpose else w, "bias": b}, "scale": s}
    return tree if dtype is None else jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def continue_jax(tx, state, params, grads_seq, dtype, transpose=True):
    update = jax.jit(tx.update)
    out = []
    for g in grads_seq:
        updates, state = update(as_tree(g, dtype, transpose), state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


def assert_continues(got, want, start_got, start_want, tol):
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        err = relative_error(a, start_got, b, start_want)
        assert err < tol, f"step {step + 1} after the move: relative error {err:.3g} >= {tol}"


def diverges(got, want, start_got, start_want):
    return max(relative_error(a, start_got, b, start_want) for a, b in zip(got, want)) > 1e-3


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    with jax.enable_x64(request.param == "float64"):
        yield request.param


# --------------------------------------------------------------------------
# PyTorch.


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason=TORCH_MISSING)


def torch_run(torch, kw, dtype, lr_lambda=None):
    """A torch.optim.RMSprop (two parameter groups) after BEFORE steps, and a
    function that takes the next steps and returns the parameters after each."""
    tdtype = getattr(torch, dtype)
    tensors = [torch.nn.Parameter(torch.tensor(x, dtype=tdtype)) for x in start()]
    opt = torch.optim.RMSprop([{"params": tensors[:2]}, {"params": tensors[2:]}], **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None

    def steps(grads_seq):
        out = []
        for g in grads_seq:
            for t, x in zip(tensors, g, strict=True):
                t.grad = torch.tensor(x, dtype=tdtype)
            opt.step()
            if sched is not None:
                sched.step()
            out.append(as_tree([t.detach().numpy() for t in tensors]))
        return out

    grads = gradients(BEFORE + AFTER)
    steps(grads[:BEFORE])
    return opt, tensors, steps, grads[BEFORE:]


def torch_params(tensors, dtype):
    return as_tree([t.detach().numpy().copy() for t in tensors], dtype)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_from_torch_continues_the_run(torch, name, dtype):
    kw = dict(lr=0.01, alpha=0.9, **CONFIGS[name])
    opt, tensors, torch_steps, rest = torch_run(torch, kw, dtype)
    params = torch_params(tensors, dtype)
    state = migrate.from_torch(opt, params, order=ORDER, layout=LAYOUT)
    tx = presets.pytorch(**migrate.pytorch_kwargs(opt))
    rmsprop_jax.validate_state(state, tx.init(params))
    assert int(state.count) == BEFORE

    got = continue_jax(tx, state, params, rest, dtype)
    fresh = continue_jax(tx, tx.init(params), params, rest, dtype)
    start_want = as_tree([t.detach().numpy() for t in tensors])
    want = torch_steps(rest)
    assert_continues(got, want, params, start_want, TOL[dtype])
    assert diverges(fresh, want, params, start_want), "a fresh state continued as well"


def test_from_torch_count_drives_a_schedule(torch, dtype):
    """LambdaLR's rate at the step the run stands at: the count must be PyTorch's step."""
    base = 0.05
    factor = lambda t: 1.0 / (1.0 + t / 3.0)
    kw = dict(lr=base, alpha=0.9, momentum=0.9, centered=True)
    opt, tensors, torch_steps, rest = torch_run(torch, kw, dtype, lr_lambda=factor)
    params = torch_params(tensors, dtype)
    state = migrate.from_torch(opt, params, order=ORDER, layout=LAYOUT)

    def schedule(count):
        t = jnp.asarray(count, float)
        return base * (1.0 / (1.0 + t / 3.0))

    tx = presets.pytorch(**dict(migrate.pytorch_kwargs(opt), lr=schedule))
    got = continue_jax(tx, state, params, rest, dtype)
    restarted_state = state._replace(count=jnp.zeros([], jnp.int32))
    restarted = continue_jax(tx, restarted_state, params, rest, dtype)
    start_want = as_tree([t.detach().numpy() for t in tensors])
    want = torch_steps(rest)
    assert_continues(got, want, params, start_want, TOL[dtype])
    assert diverges(restarted, want, params, start_want), "the count made no difference"


def test_from_torch_complex_parameters(torch, x64):
    """PyTorch keeps a complex parameter's state complex; split_complex keeps
    (real, imaginary) pairs."""
    rng = np.random.default_rng(3)
    z0 = rng.normal(size=3) + 1j * rng.normal(size=3)
    w0 = rng.normal(size=2)
    tensors = [
        torch.nn.Parameter(torch.tensor(z0, dtype=torch.complex128)),
        torch.nn.Parameter(torch.tensor(w0)),
    ]
    opt = torch.optim.RMSprop(tensors, lr=0.01, momentum=0.9, centered=True)
    grads = [(rng.normal(size=3) + 1j * rng.normal(size=3), rng.normal(size=2)) for _ in range(8)]

    def now():
        return {"w": tensors[1].detach().numpy().copy(), "z": tensors[0].detach().numpy().copy()}

    def steps(seq):
        out = []
        for gz, gw in seq:
            tensors[0].grad, tensors[1].grad = torch.tensor(gz), torch.tensor(gw)
            opt.step()
            out.append(now())
        return out

    steps(grads[:4])
    params = jax.tree.map(jnp.asarray, now())
    state = migrate.from_torch(opt, params, order=["z", "w"])
    assert state.nu["z"].shape == (3, 2) and state.nu["z"].dtype == jnp.float64
    tx = presets.pytorch(**migrate.pytorch_kwargs(opt))
    update = jax.jit(tx.update)
    got, p = [], params
    for gz, gw in grads[4:]:
        u, state = update({"w": jnp.asarray(gw), "z": jnp.asarray(gz)}, state, p)
        p = optax.apply_updates(p, u)
        got.append(p)
    start_want = now()
    assert_continues(got, steps(grads[4:]), params, start_want, TOL["float64"])

    # And back: PyTorch's complex state, exactly.
    before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    sd = migrate.to_torch(migrate.from_torch(opt, params, order=["z", "w"]), opt, order=["z", "w"])
    for key, value in before.items():
        assert sd["state"][0][key].dtype == value.dtype
        assert torch.equal(sd["state"][0][key], value), key


def test_torch_round_trips_are_exact(torch, x64):
    kw = dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.1)
    opt, tensors, _, rest = torch_run(torch, kw, "float64")
    params = torch_params(tensors, jnp.float64)
    original = {
        pid: {k: v.clone() for k, v in entry.items()}
        for pid, entry in opt.state_dict()["state"].items()
    }
    state = migrate.from_torch(opt, params, order=ORDER, layout=LAYOUT)
    sd = migrate.to_torch(state, opt, order=ORDER, layout=LAYOUT)
    assert sd["state"].keys() == original.keys()
    for pid, entry in original.items():
        assert sd["state"][pid].keys() == entry.keys()
        for key, value in entry.items():
            assert torch.equal(sd["state"][pid][key], value), (pid, key)

    # JAX -> PyTorch -> JAX, after the JAX side has taken steps of its own.
    tx = presets.pytorch(**migrate.pytorch_kwargs(opt))
    _, state = tx.update(as_tree(rest[0], jnp.float64), state, params)
    opt.load_state_dict(migrate.to_torch(state, opt, order=ORDER, layout=LAYOUT))
    back = migrate.from_torch(opt, params, order=ORDER, layout=LAYOUT)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_from_torch_takes_a_state_dict_and_one_group(torch, x64):
    kw = dict(lr=0.01, alpha=0.9, momentum=0.9)
    opt, tensors, _, _ = torch_run(torch, kw, "float64")
    params = torch_params(tensors, jnp.float64)
    whole = migrate.from_torch(opt.state_dict(), params, order=ORDER, layout=LAYOUT)
    group0 = migrate.from_torch(
        opt, params["dense"], group=0, order=["kernel", "bias"], layout={"kernel": np.transpose}
    )
    for a, b in zip(jax.tree.leaves(group0.nu), jax.tree.leaves(whole.nu["dense"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # A parameter PyTorch has not stepped has no state there: init's zeros.
    fresh = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(2))], momentum=0.9)
    state = migrate.from_torch(fresh, {"p": jnp.ones(2)})
    assert int(state.count) == 0 and not np.any(state.nu["p"]) and not np.any(state.trace["p"])


def test_from_torch_errors(torch, x64):
    kw = dict(lr=0.01, alpha=0.9, momentum=0.9)
    opt, tensors, _, _ = torch_run(torch, kw, "float64")
    params = torch_params(tensors, jnp.float64)
    with pytest.raises(ValueError, match=r"3 parameters, but `params` has 2 leaves"):
        migrate.from_torch(opt, params["dense"])
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*'dense/kernel'.*needs \(3, 4\)"):
        migrate.from_torch(opt, params, order=ORDER)
    with pytest.raises(ValueError, match=r"`order` names 'dense/weight', which is not a leaf"):
        migrate.from_torch(opt, params, order=["dense/weight", "dense/bias", "scale"])
    with pytest.raises(ValueError, match=r"more than once"):
        migrate.from_torch(opt, params, order=["dense/kernel", "dense/kernel", "scale"])
    with pytest.raises(ValueError, match=r"`layout` names 'kernel'"):
        migrate.from_torch(opt, params, order=ORDER, layout={"kernel": np.transpose})
    with pytest.raises(ValueError, match=r"`group` must be an int in \[0, 2\), got 2"):
        migrate.from_torch(opt, params, group=2)
    with pytest.raises(ValueError, match=r"torch.optim.RMSprop or its `state_dict\(\)`"):
        migrate.from_torch(object(), params)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=r"has no `alpha`: this is not the state"):
        migrate.from_torch(adam, {"p": jnp.zeros(1)})

    # Steps that differ between parameters: one count cannot hold them, unless given.
    sd = opt.state_dict()
    sd["state"][2] = dict(sd["state"][2], step=sd["state"][2]["step"] + 1)  # not in place
    with pytest.raises(ValueError, match=r"different numbers of steps"):
        migrate.from_torch(sd, params, order=ORDER, layout=LAYOUT)
    state = migrate.from_torch(sd, params, order=ORDER, layout=LAYOUT, count=3)
    assert int(state.count) == 3
    with pytest.raises(ValueError, match=r"`count` must be a whole number"):
        migrate.from_torch(sd, params, order=ORDER, layout=LAYOUT, count=-1)

    # Groups whose options shape the state differently, or whose settings differ.
    mixed = torch.optim.RMSprop(
        [{"params": tensors[:2], "momentum": 0.9}, {"params": tensors[2:], "lr": 0.5}]
    )
    with pytest.raises(ValueError, match=r"groups 0 and 1 differ in `momentum`"):
        migrate.from_torch(mixed, params, order=ORDER, layout=LAYOUT)
    with pytest.raises(ValueError, match=r"groups 0 and 1 differ in `lr` \(0.01 and 0.5\)"):
        migrate.pytorch_kwargs(mixed)
    assert migrate.pytorch_kwargs(mixed, group=1)["lr"] == 0.5

    # The state of a preset with other options, back into PyTorch.
    plain = presets.pytorch(lr=0.01).init(params)
    with pytest.raises(ValueError, match=r"has no `trace`, but the PyTorch optimizer has"):
        migrate.to_torch(plain, opt, order=ORDER, layout=LAYOUT)
    state = migrate.from_torch(opt, params, order=ORDER, layout=LAYOUT)
    with pytest.raises(ValueError, match=r"`nu` at 'dense/kernel' has shape \(3, 4\), but PyTorch"):
        migrate.to_torch(state, opt, order=ORDER)
    with pytest.raises(ValueError, match=r"the torch.optim.RMSprop to load the state into"):
        migrate.to_torch(state, opt.state_dict(), order=ORDER, layout=LAYOUT)


# --------------------------------------------------------------------------
# Keras 3, on its JAX backend. Keras' own code mixes dtypes: it runs under
# standard promotion.


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    return keras


def keras_run(keras, kw, dtype, before=BEFORE):
    """A Keras RMSprop after ``before`` steps (Keras lays kernels out as JAX does)."""
    floatx = keras.config.floatx()
    keras.config.set_floatx(dtype)  # the learning rate variable's dtype
    try:
        variables = [keras.Variable(x, dtype=dtype) for x in start()]
        opt = keras.optimizers.RMSprop(**kw)
    finally:
        keras.config.set_floatx(floatx)

    def steps(grads_seq):
        out = []
        with standard_promotion():
            for g in grads_seq:
                opt.apply_gradients(zip([np.asarray(x, dtype) for x in g], variables, strict=True))
                out.append(as_tree([np.asarray(v.value) for v in variables]))
        return out

    grads = gradients(before + AFTER)
    steps(grads[:before])
    return opt, variables, steps, grads[before:]


def keras_params(variables, dtype):
    return as_tree([np.asarray(v.value) for v in variables], dtype)


KERAS_CONFIGS = dict(CONFIGS, weight_decay=dict(weight_decay=0.1, momentum=0.5, clipnorm=0.5))


@pytest.mark.parametrize("name", sorted(KERAS_CONFIGS))
def test_from_keras_continues_the_run(keras, name, dtype):
    kw = dict(learning_rate=0.01, rho=0.9, **KERAS_CONFIGS[name])
    opt, variables, keras_steps, rest = keras_run(keras, kw, dtype)
    params = keras_params(variables, dtype)
    state = migrate.from_keras(opt, params, order=ORDER, layout=LAYOUT)
    tx = presets.keras(**migrate.keras_kwargs(opt))
    rmsprop_jax.validate_state(state, tx.init(params))  # a chain's state where it clips

    with standard_promotion():
        got = continue_jax(tx, state, params, rest, dtype)
        fresh = continue_jax(tx, tx.init(params), params, rest, dtype)
    start_want = as_tree([np.asarray(v.value) for v in variables])
    want = keras_steps(rest)
    assert_continues(got, want, params, start_want, TOL[dtype])
    assert diverges(fresh, want, params, start_want), "a fresh state continued as well"


def test_from_keras_count_drives_a_schedule(keras, dtype):
    """keras_kwargs passes a LearningRateSchedule on; it reads the moved count."""
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    kw = dict(learning_rate=schedule, rho=0.9, momentum=0.9, weight_decay=0.05)
    opt, variables, keras_steps, rest = keras_run(keras, kw, dtype)
    params = keras_params(variables, dtype)
    state = migrate.from_keras(opt, params, order=ORDER, layout=LAYOUT)
    assert int(state.count) == BEFORE
    tx = presets.keras(**migrate.keras_kwargs(opt))
    with standard_promotion():
        got = continue_jax(tx, state, params, rest, dtype)
        restarted = continue_jax(
            tx, state._replace(count=jnp.zeros([], jnp.int32)), params, rest, dtype
        )
    start_want = as_tree([np.asarray(v.value) for v in variables])
    want = keras_steps(rest)
    assert_continues(got, want, params, start_want, TOL[dtype])
    assert diverges(restarted, want, params, start_want), "the count made no difference"


def test_keras_round_trips_are_exact(keras, x64):
    kw = dict(learning_rate=0.01, rho=0.9, momentum=0.9, centered=True)
    opt, variables, _, rest = keras_run(keras, kw, "float64")
    params = keras_params(variables, jnp.float64)
    before = [np.array(v.value) for v in opt.variables]
    state = migrate.from_keras(opt, params, order=ORDER, layout=LAYOUT)
    migrate.to_keras(state, opt, order=ORDER, layout=LAYOUT)
    for a, v in zip(before, opt.variables, strict=True):
        np.testing.assert_array_equal(a, np.asarray(v.value), err_msg=v.path)

    # JAX -> Keras -> JAX, after the JAX side has taken a step of its own.
    tx = presets.keras(**migrate.keras_kwargs(opt))
    with standard_promotion():
        _, state = tx.update(as_tree(rest[0], jnp.float64), state, params)
    migrate.to_keras(state, opt, order=ORDER, layout=LAYOUT)
    assert int(opt.iterations.value) == BEFORE + 1
    back = migrate.from_keras(opt, params, order=ORDER, layout=LAYOUT)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_from_keras_errors(keras):
    kw = dict(learning_rate=0.01, momentum=0.9)
    opt, variables, _, _ = keras_run(keras, kw, "float32")
    params = keras_params(variables, jnp.float32)
    with pytest.raises(ValueError, match=r"3 parameters, but `params` has 2 leaves"):
        migrate.from_keras(opt, params["dense"])
    with pytest.raises(ValueError, match=r"`velocity` of variable 0 .* has shape \(4, 3\)"):
        migrate.from_keras(opt, params, order=ORDER)
    with pytest.raises(ValueError, match=r"must be a keras.optimizers.RMSprop, got Adam"):
        migrate.from_keras(keras.optimizers.Adam(), params)

    unbuilt = keras.optimizers.RMSprop(momentum=0.9)
    state = migrate.from_keras(unbuilt, params)  # no step taken: init's state
    assert int(state.count) == 0 and not np.any(state.nu["dense"]["kernel"])
    with pytest.raises(ValueError, match=r"not built.*optimizer.build"):
        migrate.to_keras(state, unbuilt)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2"):
        migrate.from_keras(keras.optimizers.RMSprop(gradient_accumulation_steps=2), params)
    with pytest.raises(ValueError, match=r"use_ema=True"):
        migrate.keras_kwargs(keras.optimizers.RMSprop(use_ema=True))
    excluding = keras.optimizers.RMSprop(weight_decay=0.1)
    excluding.exclude_from_weight_decay(var_names=["bias"])
    with pytest.raises(ValueError, match=r"excludes variables from weight decay"):
        migrate.keras_kwargs(excluding)
    with pytest.raises(ValueError, match=r"function of no arguments"):
        migrate.keras_kwargs(keras.optimizers.RMSprop(learning_rate=lambda: 0.1))

    centered = presets.keras(momentum=0.9, centered=True).init(params)
    with pytest.raises(ValueError, match=r"has `mu`, but the Keras optimizer has `centered=False`"):
        migrate.to_keras(centered, opt, order=ORDER, layout=LAYOUT)
    state = migrate.from_keras(opt, params, order=ORDER, layout=LAYOUT)
    before = [np.array(v.value) for v in opt.variables]
    with pytest.raises(ValueError, match=r"`nu` at 'dense/kernel' has shape \(3, 4\)"):
        migrate.to_keras(state, opt, order=ORDER)
    for a, v in zip(before, opt.variables, strict=True):  # nothing was written
        np.testing.assert_array_equal(a, np.asarray(v.value))


# --------------------------------------------------------------------------
# TensorFlow 1, through a float64 NumPy reference of its slots (TensorFlow is
# not needed, and must not be imported).

TF1_CONFIGS = {name: kw for name, kw in CONFIGS.items() if "weight_decay" not in kw}


def tf1_run(kw, before=BEFORE):
    ref = originals.TensorFlowV1(**kw)
    ref.init(start())
    grads = gradients(before + AFTER)
    for g in grads[:before]:
        ref.step(g)
    return ref, grads[before:]


def tf1_slots(ref, centered):
    slots = {"rms": list(ref.ms), "momentum": list(ref.mom)}
    if centered:
        slots["mg"] = list(ref.mg)
    return slots


@pytest.mark.parametrize("name", sorted(TF1_CONFIGS))
def test_from_tf1_continues_the_run(name, dtype, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any import of it would fail
    kw = dict(learning_rate=0.01, decay=0.9, **CONFIGS[name])
    ref, rest = tf1_run(kw)
    params = as_tree(ref.params, dtype)
    slots = tf1_slots(ref, kw.get("centered", False))
    # The slots as a tree shaped like params, each leaf in TensorFlow's layout.
    trees = {k: {"dense": {"kernel": v[0], "bias": v[1]}, "scale": v[2]} for k, v in slots.items()}
    state = migrate.from_tf1(
        trees,
        params,
        momentum=kw.get("momentum", 0.0),
        centered=kw.get("centered", False),
        count=BEFORE,
        layout={"dense/kernel": np.transpose},
    )
    tx = presets.tensorflow_v1(**kw)
    rmsprop_jax.validate_state(state, tx.init(params))
    got = continue_jax(tx, state, params, rest, dtype)
    fresh = continue_jax(tx, tx.init(params), params, rest, dtype)
    start_want = as_tree(ref.params)
    want = []
    for g in rest:
        ref.step(g)
        want.append(as_tree(ref.params))
    assert_continues(got, want, params, start_want, TOL[dtype])
    assert diverges(fresh, want, params, start_want), "a fresh state continued as well"


def test_tf1_slots_reads_a_checkpoint_without_tensorflow(monkeypatch, x64):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    kw = dict(learning_rate=0.01, decay=0.9, momentum=0.9, centered=True)
    ref, _ = tf1_run(kw)
    # Checkpoint names, as TensorFlow 1 gives its slot variables: rms, mg, momentum.
    names = {"dense": {"kernel": "dense/kernel", "bias": "dense/bias"}, "scale": "scale"}
    variables = ["dense/kernel", "dense/bias", "scale"]
    checkpoint = {}
    for i, var in enumerate(variables):
        checkpoint[var] = ref.params[i]
        for suffix, values in (("", ref.ms), ("_1", ref.mg), ("_2", ref.mom)):
            checkpoint[f"{var}/RMSProp{suffix}"] = values[i]

    class Reader:  # what tf.train.load_checkpoint returns, as far as tf1_slots looks
        def get_tensor(self, name):
            return checkpoint[name]

    for source in (checkpoint, Reader()):
        slots = migrate.tf1_slots(source, names, centered=True)
        assert sorted(slots) == ["mg", "momentum", "rms"]
        np.testing.assert_array_equal(slots["mg"]["dense"]["bias"], ref.mg[1])
        np.testing.assert_array_equal(slots["momentum"]["scale"], ref.mom[2])
    params = as_tree(ref.params, jnp.float64, transpose=False)
    state = migrate.from_tf1(slots, params, momentum=0.9, centered=True, count=BEFORE)
    np.testing.assert_array_equal(state.trace["dense"]["kernel"], -ref.mom[0])
    with pytest.raises(ValueError, match=r"no `dense/kernel/RMSProp_2` \(the 'momentum' slot"):
        only_two = {"dense/kernel/RMSProp": 1, "dense/kernel/RMSProp_1": 1}
        migrate.tf1_slots(only_two, ["dense/kernel"], centered=True)


def test_from_tf1_errors(x64):
    params = {"w": jnp.zeros(3)}
    rms = {"w": np.ones(3)}
    with pytest.raises(ValueError, match=r"`slots` has no 'momentum'"):
        migrate.from_tf1({"rms": rms}, params, momentum=0.9)
    with pytest.raises(ValueError, match=r"`slots` has no 'mg'"):
        migrate.from_tf1({"rms": rms}, params, centered=True)
    with pytest.raises(ValueError, match=r"'mg', which only a centered optimizer makes"):
        migrate.from_tf1({"rms": rms, "mg": rms}, params)
    with pytest.raises(ValueError, match=r"'velocity', which is not a slot"):
        migrate.from_tf1({"rms": rms, "velocity": rms}, params)
    with pytest.raises(ValueError, match=r"`slots\['rms'\]` has structure"):
        migrate.from_tf1({"rms": [np.ones(3)]}, params)
    with pytest.raises(ValueError, match=r"'rms' slot at 'w' has shape \(4,\).*needs \(3,\)"):
        migrate.from_tf1({"rms": {"w": np.ones(4)}}, params)
    with pytest.raises(ValueError, match=r"`count` must be a whole number"):
        migrate.from_tf1({"rms": rms}, params, count=1.5)
    # With momentum 0 TensorFlow 1 still keeps a momentum slot; it is not read.
    state = migrate.from_tf1({"rms": rms, "momentum": rms}, params)
    assert state.trace is None


def test_the_library_imports_no_framework():
    """torch and Keras are imported inside the converters only, TensorFlow never."""
    code = (
        "import sys, rmsprop_jax; from rmsprop_jax import migrate; "
        "print(sorted(m for m in ('torch', 'keras', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
