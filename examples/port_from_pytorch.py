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

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from sklearn.datasets import load_digits
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
# Data: the digits scaled to [0, 1], and one fixed sequence of batches.


def load_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y.astype(np.int64)


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """The examples of each of ``steps`` batches, shape (steps, batch_size):
    shuffled epochs without their last partial batch, as a
    ``DataLoader(shuffle=True, drop_last=True)`` makes them."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


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

    relative = np.abs(jax_losses - torch_losses) / np.abs(torch_losses)
    above = np.flatnonzero(relative > 1e-3)
    return {
        "torch_losses": torch_losses,
        "jax_losses": jax_losses,
        "relative_difference": relative,
        # Steps before the first relative difference above 1e-3 (all of them if none).
        "steps_within_1e-3": int(above[0]) if len(above) else len(relative),
        "torch_s": torch_s,
        "jax_s": jax_s,
    }


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.2 * len(results)), squeeze=False)
    for (ax_loss, ax_diff), (name, by_dtype) in zip(axes, results.items()):
        for dtype, r in by_dtype.items():
            steps = np.arange(1, len(r["torch_losses"]) + 1)
            ax_loss.plot(steps, r["torch_losses"], lw=2.5, alpha=0.5, label=f"torch, {dtype}")
            ax_loss.plot(steps, r["jax_losses"], lw=0.8, label=f"rmsprop_jax, {dtype}")
            # A log scale cannot show 0 (exact agreement): it is drawn at 1e-18.
            relative = np.maximum(r["relative_difference"], 1e-18)
            ax_diff.semilogy(steps, relative, lw=0.8, label=dtype)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss of the batch")
        ax_loss.set_title(f"{name}: torch.optim.RMSprop vs presets.pytorch")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        ax_diff.axhline(1e-9, color="gray", ls=":", lw=1, label="1e-9")
        ax_diff.set_xlabel("step")
        ax_diff.set_ylabel("|loss_jax - loss_torch| / loss_torch")
        ax_diff.set_title(f"{name}: relative difference (0 drawn at 1e-18)")
        ax_diff.legend()
        ax_diff.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=1000, help="training steps of every run (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples per batch (default: %(default)s)"
    )
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=list(NETWORKS),
        default=list(NETWORKS),
        help="the networks to port (default: both)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float64", "float32"],
        default=["float64", "float32"],
        help="the precisions to run each network in (default: both)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds torch's initial weights and the batch order (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="port_output",
        help="folder for the PNG and the JSON (default: %(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write the JSON but no PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # networks this small run fastest on one thread

    x, y = load_data()
    batches = batch_indices(len(x), args.batch_size, args.steps, args.seed)
    print(f"{len(x)} digits, {args.steps} batches of {args.batch_size}.")
    print(f"torch.optim.RMSprop({', '.join(f'{k}={v}' for k, v in HYPERPARAMETERS.items())})")
    print(f"  with LambdaLR: linear warm-up over {WARMUP} steps, then 1 / (1 + t / {DECAY});")
    print("rmsprop_jax.presets.pytorch with the same arguments and the schedule in optax form.")

    results: dict[str, dict[str, dict]] = {}
    for name in args.networks:
        for dtype in args.dtypes:
            # JAX computes in float32 unless float64 is switched on.
            with jax.enable_x64(dtype == "float64"):
                results.setdefault(name, {})[dtype] = compare(name, dtype, x, y, batches, args.seed)

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

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
    written = [out / "port_from_pytorch.json"]
    written[0].write_text(json.dumps(summary, indent=1))
    if not args.no_plot:
        plot(results, out / "port_from_pytorch.png")
        written.append(out / "port_from_pytorch.png")
    print("\nWrote " + " and ".join(map(str, written)))
    return results


if __name__ == "__main__":
    main()
