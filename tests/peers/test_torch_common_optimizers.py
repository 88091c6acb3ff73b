"""PyTorch's RMSprop test inputs, ported to rmsprop_jax.presets.pytorch.

Source: pytorch/pytorch, ``torch/testing/_internal/common_optimizers.py`` (as
installed with torch 2.13): ``optim_inputs_func_rmsprop`` (every
configuration), ``optim_error_inputs_func_rmsprop`` (every error input),
and the RMSprop ``OptimizerInfo``'s default ``scheduler_inputs``. The
configurations run through the harness of ``test/test_optim.py``'s
``TestOptimRenewed.test_forloop_goes_right_direction`` (a 10x5 weight and a
bias, loss ``sum((W @ x + b)^2)``, 20 steps, with and without
``StepLR(gamma=0.9, step_size=10)``): torch.optim.RMSprop and the preset each
run it, the parameters are compared after every step, and the loss must go
down (up under ``maximize``). Flags that only choose torch's implementation
(``foreach``, ``differentiable``, ``capturable``) and the error inputs about
parameter lists do not apply: see ``NOT_APPLICABLE.md``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TORCH_MISSING, relative_error

from rmsprop_jax import presets

torch = pytest.importorskip("torch", reason=TORCH_MISSING)

# optim_inputs_func_rmsprop: desc -> kwargs. The last one is a CUDA-only entry
# ("Tensor lr with capturable") without its capturable flag; the other two
# CUDA-only entries, without capturable, repeat "default" and
# "maximize, weight_decay".
OPTIM_INPUTS = {
    "default": {},
    "non-default lr": {"lr": 1e-3},
    "nonzero weight_decay": {"weight_decay": 0.1},
    "maximize": {"maximize": True},
    "centered": {"weight_decay": 0.1, "centered": True},
    "maximize, weight_decay": {"maximize": True, "weight_decay": 0.1},
    "momentum": {"weight_decay": 0.1, "centered": True, "momentum": 0.1},
    "maximize, centered, weight_decay, w/ momentum": {
        "weight_decay": 0.1,
        "centered": True,
        "momentum": 0.1,
        "maximize": True,
    },
    "Tensor lr": {"lr": "tensor(0.001)"},
}

STEPS = 20  # test_forloop_goes_right_direction's loop
# float32 trajectories of two implementations, 20 steps: the largest
# difference relative to the largest distance moved (the same bound as
# tests/test_presets.py's float32 parity).
TOL = 5e-5


def problem(seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(10, 5)).astype(np.float32)
    bias = rng.normal(size=(10,)).astype(np.float32)
    x = rng.normal(size=(5,)).astype(np.float32)
    return weight, bias, x


def torch_kwargs(kw):
    return {k: (torch.tensor(0.001) if v == "tensor(0.001)" else v) for k, v in kw.items()}


def preset_kwargs(kw, step_lr):
    kw = {k: (jnp.asarray(0.001) if v == "tensor(0.001)" else v) for k, v in kw.items()}
    if step_lr:
        base = kw.get("lr", 1e-2)  # torch.optim.RMSprop's default lr

        # StepLR(gamma=0.9, step_size=10), stepped once after every step.
        def schedule(count):
            return base * 0.9 ** jnp.asarray(count // 10, jnp.float32)

        kw["lr"] = schedule
    return kw


def torch_run(kw, step_lr):
    weight, bias, x = (torch.tensor(a) for a in problem())
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.RMSprop([weight, bias], **torch_kwargs(kw), foreach=False)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.9) if step_lr else None

    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    trajectory = []
    for _ in range(STEPS):
        closure()
        opt.step()
        if scheduler:
            scheduler.step()
        trajectory.append((weight.detach().numpy().copy(), bias.detach().numpy().copy()))
    return initial, closure().item(), trajectory


def preset_run(kw, step_lr):
    weight, bias, x = (jnp.asarray(a) for a in problem())
    loss = lambda p: jnp.sum((p[0] @ x + p[1]) ** 2)
    opt = presets.pytorch(**preset_kwargs(kw, step_lr))

    # Eager: the same few small kernels serve every configuration, where a
    # jitted step would compile once per configuration.
    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    params = (weight, bias)
    initial, state = float(loss(params)), opt.init(params)
    trajectory = []
    for _ in range(STEPS):
        params, state = step(params, state)
        trajectory.append(params)
    return initial, float(loss(params)), trajectory


@pytest.mark.parametrize("step_lr", [False, True], ids=["no_scheduler", "StepLR"])
@pytest.mark.parametrize("desc", list(OPTIM_INPUTS))
def test_optim_input_matches_torch_and_goes_right_direction(desc, step_lr):
    kw = OPTIM_INPUTS[desc]
    initial, final, got = preset_run(kw, step_lr)
    torch_initial, torch_final, want = torch_run(kw, step_lr)
    start = problem()[:2]
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        err = relative_error(a, start, b, start)
        assert err < TOL, f"step {t + 1}: relative error {err:.3g}"
    np.testing.assert_allclose(initial, torch_initial, rtol=1e-6)
    if kw.get("maximize", False):
        assert final > initial and torch_final > torch_initial
    else:
        assert final < initial and torch_final < torch_initial


# --------------------------------------------------------------------------
# optim_error_inputs_func_rmsprop's inputs that concern hyperparameters (the
# others are about parameter lists and groups), then torch.optim.RMSprop's own
# constructor checks (torch/optim/rmsprop.py, RMSprop.__init__). torch must
# raise ValueError on each; the preset must raise ValueError naming the
# argument under torch's name.

ERROR_INPUTS = [
    # get_error_inputs_for_all_optims: "Tensor lr must be 1-element"
    pytest.param(
        dict(lr=[0.001, 0.001]),
        "lr",
        "Tensor lr must be 1-element",
        id="Tensor lr must be 1-element",
    ),
    # optim_error_inputs_func_rmsprop: "momentum should be between 0 and 1"
    pytest.param(
        dict(lr=1e-2, momentum=-1.0),
        "momentum",
        "Invalid momentum value: -1.0",
        id="momentum should be between 0 and 1",
    ),
    # RMSprop.__init__
    pytest.param(dict(lr=-1e-2), "lr", "Invalid learning rate", id="init: lr"),
    pytest.param(dict(eps=-1e-8), "eps", "Invalid epsilon value", id="init: eps"),
    pytest.param(dict(weight_decay=-0.1), "weight_decay", "Invalid weight_decay", id="init: wd"),
    pytest.param(dict(alpha=-0.5), "alpha", "Invalid alpha value", id="init: alpha"),
]


@pytest.mark.parametrize(("kwargs", "name", "torch_regex"), ERROR_INPUTS)
def test_error_inputs(kwargs, name, torch_regex):
    param = torch.nn.Parameter(torch.zeros(1, 1))
    as_torch = {k: (torch.tensor(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=torch_regex):
        torch.optim.RMSprop([param], **as_torch)
    as_jax = {k: (jnp.asarray(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=f"`{name}`"):
        presets.pytorch(**as_jax)
