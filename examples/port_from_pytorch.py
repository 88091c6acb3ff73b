"""Porting a PyTorch training run to JAX: the same loss curve, step for step.

A network trained with ``torch.optim.RMSprop`` (momentum, centered, weight
decay, and a ``LambdaLR`` schedule) is rebuilt in Flax NNX from the same
initial weights and trained on the same batches with

    rmsprop_jax.presets.pytorch(lr=schedule, alpha=..., eps=..., weight_decay=...,
                                momentum=..., centered=True)

which takes torch's arguments unchanged. Two networks are ported, an MLP and
a small CNN, each in float64 and in float32, on scikit-learn's bundled
handwritten digits (1797 images of 8x8 pixels, no download).

What to expect. In float64 the two loss curves agree to far better than 1e-9
relative over the default 1000 steps. The difference still grows slowly, and
over a few thousand steps it can pass 1e-9: a ReLU unit that is silent for
every example gets only the weight-decay part of the gradient, RMSprop
scales that up to full-size steps, so the rounding differences in its
weights grow faster than elsewhere and reach the loss when the unit comes
back to life. In float32 they agree to about 1e-7 at first and drift slowly:
torch and XLA add up the products inside a matrix multiply or a convolution
in different orders, and each order rounds differently. Now and then the
difference jumps by orders of magnitude: when an example's input to a ReLU
is nearer zero than the two runs' rounding difference, that unit is active
for it in one run and not in the other, so the two gradients differ by the
example's whole contribution rather than by a rounding error, and RMSprop,
which divides every gradient by its running RMS, turns even a small
contribution to a nearly silent unit into a full-size step. After a few such
events the two are separate runs of the same training: the batch losses no
longer agree digit for digit, but the curves keep the same shape and level.

Porting needs care in four places, all shown below:

* layouts: ``torch.nn.Linear`` stores its weight as (out, in), Flax as
  (in, out); ``torch.nn.Conv2d`` as (out, in, h, w), Flax as (h, w, in, out);
  and flattening an NCHW feature map orders the features (c, h, w) where an
  NHWC one gives (h, w, c), so the weight after a flatten is permuted;
* padding: torch's ``padding=1`` pads every side by one pixel, whereas Flax's
  ``"SAME"`` with stride 2 pads an 8-pixel side by (0, 1) (TensorFlow's rule),
  so the padding is written out;
* copies: ``tensor.numpy()`` shares torch's memory, and JAX on CPU may share
  it too, so torch's in-place updates would leak into the JAX model;
* the schedule: ``LambdaLR`` is stepped after each optimizer step, so step
  ``t`` (from 0) uses ``lr * lr_lambda(t)``; the preset evaluates an optax
  schedule at the same count, ``t``.

Run:  python examples/port_from_pytorch.py [--steps 1000] [--out port_output]
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # for _port_common

import _port_common as common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from tqdm import tqdm

from rmsprop_jax import presets

# --------------------------------------------------------------------------
# The optimizer, written once as torch's keyword arguments.

HYPERPARAMETERS = dict(
    lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=1e-4, momentum=0.9, centered=True
)
WARMUP = 100  # steps of linear warm-up, ...
DECAY = 500  # ... then the rate falls like 1 / (1 + t / DECAY)


def lr_lambda(step: int) -> float:
    """The function given to ``torch.optim.lr_scheduler.LambdaLR``."""
    return min(1.0, (step + 1) / WARMUP) / (1.0 + step / DECAY)


def lr_schedule(count: jax.Array) -> jax.Array:
    """The same rate as an optax schedule of the preset's step count.

    The same operations in the same order as ``lr * lr_lambda(t)``, so in
    float64 both frameworks use exactly the same number.
    """
    t = jnp.asarray(count, float)  # float64 when float64 is on, else float32
    return HYPERPARAMETERS["lr"] * (jnp.minimum(1.0, (t + 1) / WARMUP) / (1.0 + t / DECAY))


# --------------------------------------------------------------------------
# The networks in PyTorch ...


def torch_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def torch_cnn() -> torch.nn.Module:
    # (N, 64) -> (N, 1, 8, 8) -> (N, 8, 8, 8) -> (N, 16, 4, 4) -> (N, 256) -> (N, 10)
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
    )


# ... and in Flax NNX, with a method that copies torch's weights in.


def numpy(tensor: torch.Tensor) -> np.ndarray:
    """A copy of a tensor's values, not a view of torch's memory."""
    return tensor.detach().numpy().copy()


def assign(param: nnx.Param, value: np.ndarray) -> None:
    assert param.shape == value.shape, f"shape {value.shape} for a parameter of {param.shape}"
    param.set_value(jax.device_put(np.asarray(value, param.dtype)))


def copy_linear(layer: nnx.Linear, linear: torch.nn.Linear) -> None:
    assign(layer.kernel, numpy(linear.weight).T)  # (out, in) -> (in, out)
    assign(layer.bias, numpy(linear.bias))


def copy_conv(layer: nnx.Conv, conv: torch.nn.Conv2d) -> None:
    assign(layer.kernel, numpy(conv.weight).transpose(2, 3, 1, 0))  # OIHW -> HWIO
    assign(layer.bias, numpy(conv.bias))


class MLP(nnx.Module):
    def __init__(self, dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.hidden = nnx.Linear(64, 64, **kw)
        self.out = nnx.Linear(64, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))

    def copy_from(self, net: torch.nn.Sequential) -> None:
        copy_linear(self.hidden, net[0])
        copy_linear(self.out, net[2])


class CNN(nnx.Module):
    def __init__(self, dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        one = ((1, 1), (1, 1))  # torch's padding=1: one pixel on every side
        self.conv1 = nnx.Conv(1, 8, (3, 3), padding=one, **kw)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=(2, 2), padding=one, **kw)
        self.out = nnx.Linear(256, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(-1, 8, 8, 1)  # NHWC
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.out(x.reshape(x.shape[0], -1))  # features in (h, w, c) order

    def copy_from(self, net: torch.nn.Sequential) -> None:
        copy_conv(self.conv1, net[1])
        copy_conv(self.conv2, net[3])
        # torch's 256 inputs are (c=16, h=4, w=4) in that order; here (h, w, c).
        w = numpy(net[6].weight).reshape(10, 16, 4, 4)
        assign(self.out.kernel, w.transpose(2, 3, 1, 0).reshape(256, 10))
        assign(self.out.bias, numpy(net[6].bias))


NETWORKS = {"MLP": (torch_mlp, MLP), "CNN": (torch_cnn, CNN)}


# --------------------------------------------------------------------------
# Training: the PyTorch loop as it was, ...


def train_torch(net, x, y, batches, dtype, desc) -> np.ndarray:
    x = torch.tensor(x, dtype=dtype)
    y = torch.tensor(y)
    optimizer = torch.optim.RMSprop(net.parameters(), **HYPERPARAMETERS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    losses = []
    for idx in tqdm(batches, desc=desc, ncols=80, leave=False):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return np.array(losses)


# ... and its port: the model split into a definition and a parameter pytree,
# and one jitted step that takes and returns the optimizer state.


def train_jax(model, x, y, batches, dtype, desc) -> np.ndarray:
    graphdef, params = nnx.split(model)
    tx = presets.pytorch(**dict(HYPERPARAMETERS, lr=lr_schedule))
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    x = np.asarray(x, dtype)
    y = np.asarray(y, np.int32)
    losses = []
    for idx in tqdm(batches, desc=desc, ncols=80, leave=False):
        params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx])
        losses.append(loss)
    return np.array([float(loss) for loss in losses])


# --------------------------------------------------------------------------
# One comparison: a network in one dtype, trained by both from the same start.


def compare(name: str, dtype: str, x, y, batches, seed: int) -> dict:
    make_torch, make_flax = NETWORKS[name]
    torch.manual_seed(seed)
    net = make_torch().to(getattr(torch, dtype))
    # The Flax model is only shaped (no random weights drawn): torch's are copied in.
    model = nnx.eval_shape(lambda: make_flax(jnp.dtype(dtype), nnx.Rngs(seed)))
    model.copy_from(net)

    start = time.perf_counter()
    torch_losses = train_torch(net, x, y, batches, getattr(torch, dtype), f"{name} {dtype} torch")
    torch_s = time.perf_counter() - start
    start = time.perf_counter()
    jax_losses = train_jax(model, x, y, batches, jnp.dtype(dtype), f"{name} {dtype} jax")
    jax_s = time.perf_counter() - start

    return {
        "torch_losses": torch_losses,
        "jax_losses": jax_losses,
        **common.relative_difference(jax_losses, torch_losses),
        "torch_s": torch_s,
        "jax_s": jax_s,
    }


def plot(results: dict, path: pathlib.Path) -> None:
    title = "torch.optim.RMSprop vs presets.pytorch"
    common.plot_comparison(results, path, key="torch", label="torch", title=title)


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__.splitlines()[0], NETWORKS, "torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # networks this small run fastest on one thread

    x, y = common.load_data(np.int64)
    batches = common.batch_indices(len(x), args.batch_size, args.steps, args.seed)
    print(f"{len(x)} digits, {args.steps} batches of {args.batch_size}.")
    print(f"torch.optim.RMSprop({', '.join(f'{k}={v}' for k, v in HYPERPARAMETERS.items())})")
    print(f"  with LambdaLR: linear warm-up over {WARMUP} steps, then 1 / (1 + t / {DECAY});")
    print("rmsprop_jax.presets.pytorch with the same arguments and the schedule in optax form.")

    results = common.run_all(
        args, lambda name, dtype: compare(name, dtype, x, y, batches, args.seed)
    )

    print(
        f"\n{'network':<9}{'dtype':<9}{'final loss torch':>18}{'final loss jax':>18}"
        f"{'max rel. diff':>15}{'steps within 1e-3':>19}{'torch s':>9}{'jax s':>7}"
    )
    for name, by_dtype in results.items():
        for dtype, r in by_dtype.items():
            print(
                f"{name:<9}{dtype:<9}{r['torch_losses'][-1]:>18.10f}{r['jax_losses'][-1]:>18.10f}"
                f"{r['relative_difference'].max():>15.2e}{r['steps_within_1e-3']:>19d}"
                f"{r['torch_s']:>9.1f}{r['jax_s']:>7.1f}"
            )

    summary = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "hyperparameters": HYPERPARAMETERS,
        "schedule": {"warmup": WARMUP, "decay": DECAY},
        "runs": {
            name: {
                dtype: {
                    "final_loss_torch": float(r["torch_losses"][-1]),
                    "final_loss_jax": float(r["jax_losses"][-1]),
                    "max_relative_difference": float(r["relative_difference"].max()),
                    "steps_within_1e-3": r["steps_within_1e-3"],
                    "torch_losses": r["torch_losses"].tolist(),
                    "jax_losses": r["jax_losses"].tolist(),
                }
                for dtype, r in by_dtype.items()
            }
            for name, by_dtype in results.items()
        },
    }
    draw = None if args.no_plot else lambda path: plot(results, path)
    common.write(args.out, "port_from_pytorch", summary, draw)
    return results


if __name__ == "__main__":
    main()
