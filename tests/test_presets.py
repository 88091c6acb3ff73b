"""Presets against the real libraries (torch, Keras, optax, jax.example_libraries)
and against float64 references of the originals that cannot be installed here.

Every parity test runs STEPS steps on a multi-leaf tree with varying gradients
and compares the parameters after every step: float64 to 1e-9 and float32 to
5e-5, relative to the largest distance the reference has moved.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_originals as originals
from configs import SCHEDULE
from helpers import PARITY_STEPS as STEPS
from helpers import PARITY_TOL as TOL
from helpers import (
    TORCH_MISSING,
    assert_trajectories_match,
    gradient_sequence,
    make_tree,
    relative_error,
    run_preset,
    start_of,
    to_jax,
)

from rmsprop_jax import presets

# --------------------------------------------------------------------------
# PyTorch: torch.optim.RMSprop itself.

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason=TORCH_MISSING)

TORCH_CONFIGS = {
    "default": dict(lr=0.01),
    "momentum": dict(lr=0.01, momentum=0.9),
    "centered": dict(lr=0.01, centered=True),
    "centered_momentum": dict(lr=0.01, centered=True, momentum=0.9, alpha=0.9),
    "weight_decay": dict(lr=0.01, weight_decay=0.1),
    "weight_decay_momentum_centered": dict(lr=0.01, weight_decay=0.05, momentum=0.5, centered=True),
    "maximize": dict(lr=0.01, maximize=True, momentum=0.9, weight_decay=0.1),
    "big_eps": dict(lr=0.01, eps=1e-2),
}


def torch_trajectory(kw, tree, grads, dtype, lr_lambda=None):
    leaves, treedef = jax.tree.flatten(start_of(tree, dtype))
    tdtype = torch.float64 if dtype == jnp.float64 else torch.float32

    def tensor(x):
        if np.iscomplexobj(x):
            ctype = torch.complex128 if tdtype == torch.float64 else torch.complex64
            return torch.tensor(np.asarray(x), dtype=ctype)
        return torch.tensor(np.asarray(x), dtype=tdtype)

    params = [tensor(p).requires_grad_(True) for p in leaves]
    opt = torch.optim.RMSprop(params, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
    out = []
    for g in grads:
        for p, gl in zip(params, treedef.flatten_up_to(g)):
            p.grad = tensor(gl)
        opt.step()
        if sched:
            sched.step()
        out.append(treedef.unflatten([p.detach().numpy().copy() for p in params]))
    return out


@needs_torch
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", sorted(TORCH_CONFIGS))
def test_pytorch_parity(name, dtype, x64):
    kw = TORCH_CONFIGS[name]
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(presets.pytorch(**kw), tree, grads, dtype)
    want = torch_trajectory(kw, tree, grads, dtype)
    assert_trajectories_match(got, want, start_of(tree, dtype), start_of(tree, dtype), TOL[dtype])


@needs_torch
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "kw", [dict(lr=0.01), dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)]
)
def test_pytorch_parity_complex(kw, dtype, x64):
    tree = make_tree(complex_leaf=True)
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(presets.pytorch(**kw), tree, grads, dtype)
    want = torch_trajectory(kw, tree, grads, dtype)
    assert_trajectories_match(got, want, start_of(tree, dtype), start_of(tree, dtype), TOL[dtype])


@needs_torch
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_pytorch_parity_lambda_lr_schedule(dtype, x64):
    """LambdaLR stepped every iteration; with momentum the lr sits outside the buffer."""
    factor = lambda epoch: 1.0 / (1.0 + 0.3 * epoch)
    kw = dict(lr=0.05, momentum=0.9, centered=True)
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    schedule = lambda count: 0.05 / (1.0 + 0.3 * jnp.asarray(count, float))
    got = run_preset(presets.pytorch(**dict(kw, lr=schedule)), tree, grads, dtype)
    want = torch_trajectory(kw, tree, grads, dtype, lr_lambda=factor)
    assert_trajectories_match(got, want, start_of(tree, dtype), start_of(tree, dtype), TOL[dtype])
    # lr inside the buffer (optax/TF style) would not match under a schedule.
    from rmsprop_jax import rmsprop

    inside = run_preset(
        rmsprop(
            schedule, decay=0.99, eps_in_sqrt=False, centered=True, momentum=0.9, split_complex=True
        ),
        tree,
        grads,
        dtype,
    )
    assert relative_error(inside[-1], start_of(tree, dtype), want[-1], start_of(tree, dtype)) > 1e-3


# --------------------------------------------------------------------------
# Keras 3 on the JAX backend.

KERAS_CONFIGS = {
    "default": dict(learning_rate=0.01),
    "momentum": dict(learning_rate=0.01, momentum=0.9),
    "centered": dict(learning_rate=0.01, centered=True),
    "weight_decay": dict(learning_rate=0.01, weight_decay=0.1, momentum=0.5),
    "clipnorm": dict(learning_rate=0.01, clipnorm=0.5),
    "clipvalue": dict(learning_rate=0.01, clipvalue=0.3),
    "global_clipnorm": dict(learning_rate=0.01, global_clipnorm=1.0, centered=True, momentum=0.9),
}


def keras_trajectory(kw, tree, grads, learning_rate=None):
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "jax"
    leaves, treedef = jax.tree.flatten(start_of(tree, jnp.float32))
    variables = [keras.Variable(np.asarray(p, np.float32)) for p in leaves]
    opt = keras.optimizers.RMSprop(**dict(kw, learning_rate=learning_rate or kw["learning_rate"]))
    out = []
    for g in grads:
        gl = [np.asarray(x, np.float32) for x in treedef.flatten_up_to(g)]
        opt.apply_gradients(zip(gl, variables))
        out.append(treedef.unflatten([np.asarray(v.value) for v in variables]))
    return out


@pytest.mark.parametrize("name", sorted(KERAS_CONFIGS))
def test_keras_parity(name):
    kw = KERAS_CONFIGS[name]
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(presets.keras(**kw), tree, grads, jnp.float32)
    with jax.numpy_dtype_promotion("standard"):  # Keras' own code mixes dtypes
        want = keras_trajectory(kw, tree, grads)
    assert_trajectories_match(
        got, want, start_of(tree, jnp.float32), start_of(tree, jnp.float32), TOL[jnp.float32]
    )


def test_keras_parity_with_schedule():
    keras = pytest.importorskip("keras")
    kw = dict(learning_rate=0.05, momentum=0.9, weight_decay=0.1)
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    keras_schedule = keras.optimizers.schedules.ExponentialDecay(
        0.05, decay_steps=5, decay_rate=0.5
    )
    optax_schedule = optax.exponential_decay(0.05, transition_steps=5, decay_rate=0.5)
    with jax.numpy_dtype_promotion("standard"):
        got = run_preset(
            presets.keras(**dict(kw, learning_rate=optax_schedule)), tree, grads, jnp.float32
        )
        want = keras_trajectory(kw, tree, grads, learning_rate=keras_schedule)
    assert_trajectories_match(
        got, want, start_of(tree, jnp.float32), start_of(tree, jnp.float32), TOL[jnp.float32]
    )


def test_keras_rejects_two_clipping_options():
    with pytest.raises(
        ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"
    ):
        presets.keras(clipnorm=1.0, clipvalue=0.5)


# --------------------------------------------------------------------------
# Float64 references of the originals that cannot be installed here.

ORIGINALS = [
    ("tensorflow_v1", originals.TensorFlowV1, dict(learning_rate=0.01)),
    (
        "tensorflow_v1",
        originals.TensorFlowV1,
        dict(learning_rate=SCHEDULE, momentum=0.9, centered=True, epsilon=1e-6),
    ),
    ("timm_tf", originals.TimmTF, dict(lr=0.01)),
    ("timm_tf", originals.TimmTF, dict(lr=SCHEDULE, momentum=0.9, weight_decay=0.1)),
    (
        "timm_tf",
        originals.TimmTF,
        dict(
            lr=SCHEDULE, momentum=0.9, weight_decay=0.1, decoupled_decay=True, lr_in_momentum=False
        ),
    ),
    ("timm_tf", originals.TimmTF, dict(lr=0.01, centered=True, eps=1e-3)),
    ("sonnet", originals.Sonnet, dict(learning_rate=0.01)),
    ("sonnet", originals.Sonnet, dict(learning_rate=SCHEDULE, momentum=0.9, centered=True)),
    ("lasagne", originals.Lasagne, dict(learning_rate=0.01)),
    ("hinton_2012", originals.Hinton2012, dict(learning_rate=0.01)),
    ("graves_2013", originals.Graves2013, dict()),
    ("graves_2013", originals.Graves2013, dict(learning_rate=0.01, momentum=0.5)),
    ("dqn_nature_2015", originals.DQN2015, dict()),
    ("dqn_nature_2015", originals.DQN2015, dict(learning_rate=0.01, decay=0.9)),
]


def original_trajectory(cls, kw, tree, grads):
    ref = cls(**kw)
    leaves, treedef = jax.tree.flatten(tree)
    ref.init(leaves)
    out = []
    for g in grads:
        ref.step(treedef.flatten_up_to(g))
        out.append(treedef.unflatten([p.copy() for p in ref.params]))
    return out


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(("name", "cls", "kw"), ORIGINALS)
def test_original_parity(name, cls, kw, dtype, x64):
    tree = make_tree()
    if dtype == jnp.float32:
        # At Graves' and DQN's learning rates (1e-4) two steps move O(1)
        # parameters by ~2e-4, and float32 storage alone rounds them by up to
        # 6e-8 a step: 3e-4 of the movement. Parameters of size 1e-2 keep
        # storage rounding out of what this test measures (the optimizer).
        tree = jax.tree.map(lambda x: 1e-2 * x, tree)
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(getattr(presets, name)(**kw), tree, grads, dtype)
    start = start_of(tree, dtype)
    want = original_trajectory(cls, kw, start, grads)
    assert_trajectories_match(got, want, start, start, TOL[dtype])


# --------------------------------------------------------------------------
# Presets that coincide with optax or jax.example_libraries.


def test_lasagne_equals_example_libraries_rmsprop():
    from jax.example_libraries import optimizers

    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(presets.lasagne(0.01, rho=0.9, epsilon=1e-6), tree, grads, jnp.float32)
    init, update, get_params = optimizers.rmsprop(0.01, gamma=0.9, eps=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        state = init(to_jax(tree, jnp.float32))
        want = []
        for i, g in enumerate(grads):
            state = update(i, to_jax(g, jnp.float32), state)
            want.append(jax.tree.map(np.asarray, get_params(state)))
    assert_trajectories_match(got, want, to_jax(tree, jnp.float32), to_jax(tree, jnp.float32), 1e-6)


@pytest.mark.parametrize(
    ("preset", "optax_kw"),
    [
        (
            lambda: presets.sonnet(0.01, momentum=0.9, centered=True),
            dict(learning_rate=0.01, eps=1e-10, momentum=0.9, centered=True),
        ),
        (
            lambda: presets.tensorflow_v1(0.01, momentum=0.9),
            dict(learning_rate=0.01, eps=1e-10, momentum=0.9, initial_scale=1.0),
        ),
        (
            lambda: presets.graves_2013(),
            dict(learning_rate=1e-4, decay=0.95, eps=1e-4, momentum=0.9, centered=True),
        ),
    ],
)
def test_presets_equal_optax_configuration(preset, optax_kw):
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(preset(), tree, grads, jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        want = run_preset(optax.rmsprop(**optax_kw), tree, grads, jnp.float32)
    assert_trajectories_match(got, want, to_jax(tree, jnp.float32), to_jax(tree, jnp.float32), 1e-5)


# --------------------------------------------------------------------------
# Bad input is reported under the original's argument names.


@pytest.mark.parametrize(
    ("preset", "kw", "name"),
    [
        ("pytorch", dict(alpha=1.5), "alpha"),
        ("pytorch", dict(lr=-1.0), "lr"),
        ("keras", dict(rho=-0.1), "rho"),
        ("keras", dict(epsilon=-1.0), "epsilon"),
        ("keras", dict(clipnorm=-1.0), "clipnorm"),
        ("tensorflow_v1", dict(learning_rate=0.1, decay=1.0), "decay"),
        ("timm_tf", dict(momentum=1.0), "momentum"),
        ("timm_tf", dict(decoupled_decay="yes"), "decoupled_decay"),
        ("sonnet", dict(learning_rate=0.1, epsilon=-1.0), "epsilon"),
        ("lasagne", dict(rho=2.0), "rho"),
        ("hinton_2012", dict(learning_rate=-0.1), "learning_rate"),
        ("graves_2013", dict(momentum=-0.1), "momentum"),
        ("dqn_nature_2015", dict(min_squared_gradient=-0.01), "min_squared_gradient"),
    ],
)
def test_preset_errors_use_original_names(preset, kw, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        getattr(presets, preset)(**kw)
