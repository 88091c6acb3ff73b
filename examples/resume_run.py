"""Resuming a PyTorch or Keras run in JAX, optimizer state included.

A small network is trained for a while with ``torch.optim.RMSprop`` (and, in
a second run, with Keras 3's ``RMSprop``), then moved to Flax NNX mid-run and
trained on in JAX with the matching preset. The move takes the weights *and*
the optimizer's state:

    state = migrate.from_torch(optimizer, params, order=ORDER, layout=TORCH_LAYOUT)
    tx = presets.pytorch(**migrate.pytorch_kwargs(optimizer))

Beside it, the same move without the state (``tx.init(params)``, as a port
that copies only the weights does), and the original framework's own
continuation on the same batches.

What to expect. With the state, the JAX run is the original's continuation:
in float64 the batch losses agree with the original's to about 1e-14
relative over the 300 steps after the move, in float32 to about 1e-6 at
first, drifting to a few 1e-5 (``port_from_pytorch.py`` says why float32 runs
drift apart). Without the state the second moment restarts at zero, so the
first steps divide each gradient by about sqrt(1 - rho) |g| instead of the
run's RMS: steps up to 1 / sqrt(1 - rho) times larger (10 times at PyTorch's
``alpha=0.99``, 3 times at Keras' ``rho=0.9``; momentum adds them up, and
centering, which subtracts the mean's square, makes the first ones larger
still). The script measures the jump two ways: the highest batch loss in the
50 steps after the move over the loss just before it, and the loss without
the state over the loss with it, batch by batch (the same batches, so their
own ups and downs cancel).

Which leaf is which: the originals list their parameters in registration
order (kernel, bias, kernel, bias), flax's state is a tree ordered by name
(``hidden/bias``, ``hidden/kernel``, ...; each flax parameter's array is at
``.../value``), so ``order`` lists the tree's leaves in the original's order.
PyTorch's ``nn.Linear`` stores its weight as (out, in) and flax as (in, out):
``layout`` transposes their state as the weights are transposed.

Run:  python examples/resume_run.py [--before 300] [--steps 300] [--out resume_output]
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # for _port_common

import _port_common as common
import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import torch
from flax import nnx
from tqdm import tqdm

from rmsprop_jax import migrate, presets

# --------------------------------------------------------------------------
# The two original runs' optimizers.

TORCH_HYPERPARAMETERS = dict(
    lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=1e-4, momentum=0.9, centered=True
)
KERAS_HYPERPARAMETERS = dict(
    learning_rate=1e-3, rho=0.9, momentum=0.9, epsilon=1e-7, weight_decay=0.01, clipnorm=0.5
)
LEVEL = 20  # the loss before the move: the mean of the last LEVEL batch losses
WINDOW = 50  # the steps after the move in which the spike is measured

# The Flax model's parameter leaves in the originals' order, and the two
# PyTorch weights whose layout differs from flax's.
ORDER = ["hidden/kernel/value", "hidden/bias/value", "out/kernel/value", "out/bias/value"]
TORCH_LAYOUT = {"hidden/kernel/value": np.transpose, "out/kernel/value": np.transpose}


# --------------------------------------------------------------------------
# The network: the same MLP in PyTorch, Keras and Flax NNX.


def torch_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def keras_mlp() -> keras.Model:
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )


class MLP(nnx.Module):
    def __init__(self, dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.hidden = nnx.Linear(64, 64, **kw)
        self.out = nnx.Linear(64, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def flax_mlp(weights: list[np.ndarray], dtype: str) -> MLP:
    """The Flax MLP holding ``weights`` (kernel, bias, kernel, bias) in Flax's layout."""
    model = nnx.eval_shape(lambda: MLP(jnp.dtype(dtype), nnx.Rngs(0)))  # shaped only
    params = [model.hidden.kernel, model.hidden.bias, model.out.kernel, model.out.bias]
    for param, value in zip(params, weights, strict=True):
        assert param.shape == value.shape, f"shape {value.shape} for a parameter of {param.shape}"
        param.set_value(jax.device_put(np.array(value, dtype)))  # a copy: no shared memory
    return model


# --------------------------------------------------------------------------
# Training loops: PyTorch's, Keras', and one jitted JAX step for both.


def train_torch(net, optimizer, x, y, batches, desc) -> np.ndarray:
    losses = []
    for idx in tqdm(batches, desc=desc, ncols=80, leave=False):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def train_keras(model, x, y, batches, desc) -> np.ndarray:
    batches = tqdm(batches, desc=desc, ncols=80, leave=False)
    return np.array([model.train_on_batch(x[idx], y[idx]) for idx in batches])


def train_jax(model, tx, opt_state, x, y, batches, desc) -> np.ndarray:
    graphdef, params = nnx.split(model)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for idx in tqdm(batches, desc=desc, ncols=80, leave=False):
        params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx])
        losses.append(loss)
    return np.array([float(loss) for loss in losses])


# --------------------------------------------------------------------------
# The two runs, each moved to JAX after the first batches.


def summarize(before, original, moved, fresh) -> dict:
    """The loss curves, and the spike, two ways: the highest loss in the first
    WINDOW steps after the move over the loss just before it (``peak_ratio``),
    and the fresh run's loss over the moved run's on the same batches, which
    takes the batches' own ups and downs out (``fresh_over_moved``)."""
    level = float(np.mean(before[-LEVEL:]))
    window = min(WINDOW, len(original))
    ratio = fresh[:window] / moved[:window]
    return {
        "before": before,
        "original": original,
        "moved": moved,
        "fresh": fresh,
        "relative_difference": np.abs(moved - original) / np.abs(original),
        "loss_before_move": level,
        "peak_ratio": {
            run: float(np.max(losses[:window]) / level)
            for run, losses in (("original", original), ("moved", moved), ("fresh", fresh))
        },
        "fresh_over_moved": {"max": float(ratio.max()), "mean": float(ratio.mean())},
    }


def run_torch(dtype: str, x, y, before, after, seed: int) -> dict:
    torch.manual_seed(seed)
    net = torch_mlp().to(getattr(torch, dtype))
    optimizer = torch.optim.RMSprop(net.parameters(), **TORCH_HYPERPARAMETERS)
    xt, yt = torch.tensor(x, dtype=getattr(torch, dtype)), torch.tensor(y, dtype=torch.int64)
    losses_before = train_torch(net, optimizer, xt, yt, before, f"torch {dtype}")

    # The move, before PyTorch goes on (from_torch copies the state).
    weights = [p.detach().numpy() for p in net.parameters()]
    model = flax_mlp([w.T if w.ndim == 2 else w for w in weights], dtype)
    params = nnx.state(model, nnx.Param)
    state = migrate.from_torch(optimizer, params, order=ORDER, layout=TORCH_LAYOUT)
    tx = presets.pytorch(**migrate.pytorch_kwargs(optimizer))

    xj, yj = np.asarray(x, dtype), np.asarray(y, np.int32)
    moved = train_jax(model, tx, state, xj, yj, after, f"moved {dtype}")
    fresh = train_jax(model, tx, tx.init(params), xj, yj, after, f"fresh {dtype}")
    original = train_torch(net, optimizer, xt, yt, after, f"torch on {dtype}")
    return summarize(losses_before, original, moved, fresh)


def run_keras(dtype: str, x, y, before, after, seed: int) -> dict:
    # Keras' layers take their dtype from the global policy, its optimizer from floatx.
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(seed)
        net = keras_mlp()
        net.compile(
            optimizer=keras.optimizers.RMSprop(**KERAS_HYPERPARAMETERS),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        xk, yk = np.asarray(x, dtype), np.asarray(y, np.int32)
        losses_before = train_keras(net, xk, yk, before, f"keras {dtype}")

        # The move: Keras lays kernels out as Flax does, so no `layout`.
        model = flax_mlp(net.get_weights(), dtype)
        params = nnx.state(model, nnx.Param)
        state = migrate.from_keras(net.optimizer, params, order=ORDER)
        tx = presets.keras(**migrate.keras_kwargs(net.optimizer))

        moved = train_jax(model, tx, state, xk, yk, after, f"moved {dtype}")
        fresh = train_jax(model, tx, tx.init(params), xk, yk, after, f"fresh {dtype}")
        original = train_keras(net, xk, yk, after, f"keras on {dtype}")
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    return summarize(losses_before, original, moved, fresh)


RUNS = {"PyTorch": run_torch, "Keras": run_keras}


def plot(results: dict, path: pathlib.Path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(len(results), 3, figsize=(17, 4.2 * len(results)), squeeze=False)
    for (ax_loss, ax_ratio, ax_diff), (name, by_dtype) in zip(axes, results.items()):
        dtype = "float64" if "float64" in by_dtype else next(iter(by_dtype))
        r = by_dtype[dtype]
        n = len(r["before"])
        after = np.arange(n + 1, n + len(r["original"]) + 1)
        ax_loss.plot(np.arange(1, n + 1), r["before"], color="gray", lw=0.8, label=name)
        ax_loss.plot(after, r["original"], color="gray", lw=2.5, alpha=0.5, label=f"{name}, on")
        ax_loss.plot(after, r["moved"], color="C0", lw=0.8, label="moved with its state")
        ax_loss.plot(after, r["fresh"], color="C3", lw=0.8, label="moved without (fresh state)")
        ax_loss.axvline(n + 0.5, color="black", ls=":", lw=1)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss of the batch")
        ax_loss.set_title(f"{name} run moved to JAX at step {n} ({dtype})")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)

        ax_ratio.semilogy(after, r["fresh"] / r["moved"], color="C3", lw=0.8)
        ax_ratio.axhline(1, color="C0", lw=1)
        ax_ratio.set_xlabel("step")
        ax_ratio.set_ylabel("loss without the state / loss with it")
        ax_ratio.set_title(f"{name}: the cost of a fresh state, batch by batch")
        ax_ratio.grid(alpha=0.3, which="both")

        for dt, rr in by_dtype.items():
            relative = np.maximum(rr["relative_difference"], 1e-18)  # 0 drawn at 1e-18
            ax_diff.semilogy(after, relative, lw=0.8, label=dt)
        ax_diff.set_xlabel("step")
        ax_diff.set_ylabel(f"|loss_moved - loss_{name}| / loss_{name}")
        ax_diff.set_title(f"moved vs {name} going on (0 drawn at 1e-18)")
        ax_diff.legend()
        ax_diff.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__.splitlines()[0], None, "the originals", steps=300)
    parser.add_argument(
        "--before", type=int, default=300, help="steps before the move (default: %(default)s)"
    )
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.set_defaults(out="resume_output")
    args = parser.parse_args(argv)
    if "Keras" in args.runs and keras.backend.backend() != "jax":
        parser.error(f"needs Keras' JAX backend (KERAS_BACKEND=jax), not {keras.backend.backend()}")
    torch.set_num_threads(1)  # a network this small runs fastest on one thread

    x, y = common.load_data(np.int64)
    batches = common.batch_indices(len(x), args.batch_size, args.before + args.steps, args.seed)
    before, after = batches[: args.before], batches[args.before :]
    print(f"{len(x)} digits; {args.before} steps, the move, then {args.steps} steps.")

    results = common.run_all(
        args,
        lambda name, dtype: RUNS[name](dtype, x, y, before, after, args.seed),
        names=args.runs,
    )
    print(
        f"\n{'run':<9}{'dtype':<9}{'max rel. diff':>15}{'loss before':>13}"
        f"{'peak/before: on':>17}{'moved':>8}{'fresh':>8}{'fresh/moved: max':>18}{'mean':>7}"
    )
    for name, by_dtype in results.items():
        for dtype, r in by_dtype.items():
            peak, ratio = r["peak_ratio"], r["fresh_over_moved"]
            print(
                f"{name:<9}{dtype:<9}{r['relative_difference'].max():>15.2e}"
                f"{r['loss_before_move']:>13.4f}{peak['original']:>17.2f}"
                f"{peak['moved']:>8.2f}{peak['fresh']:>8.2f}{ratio['max']:>18.2f}{ratio['mean']:>7.2f}"
            )
    print(f"(max rel. diff: moved vs the original going on, over all {args.steps} steps after")
    print(f" the move; peak/before: the highest batch loss in the {WINDOW} steps after the move")
    print(f" over the mean of the last {LEVEL} before it, for the original going on, the run")
    print(" moved with its state and the run moved without it (fresh); fresh/moved: the")
    print(
        f" loss without the state over the loss with it, batch by batch, in those {WINDOW} steps)"
    )

    summary = {
        "before": args.before,
        "after": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "window": WINDOW,
        "hyperparameters": {"PyTorch": TORCH_HYPERPARAMETERS, "Keras": KERAS_HYPERPARAMETERS},
        "runs": {
            name: {
                dtype: {
                    "max_relative_difference": float(r["relative_difference"].max()),
                    "loss_before_move": r["loss_before_move"],
                    "peak_ratio": r["peak_ratio"],
                    "fresh_over_moved": r["fresh_over_moved"],
                    **{k: r[k].tolist() for k in ("before", "original", "moved", "fresh")},
                }
                for dtype, r in by_dtype.items()
            }
            for name, by_dtype in results.items()
        },
    }
    draw = None if args.no_plot else lambda path: plot(results, path)
    common.write(args.out, "resume_run", summary, draw)
    return results


if __name__ == "__main__":
    main()
