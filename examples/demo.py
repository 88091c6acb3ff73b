"""The main demo (`make demo`): RMSprop against AdaGrad, SGD with momentum and Adam.

Left panel: a Flax NNX classifier trained on scikit-learn's bundled
handwritten digits (real data, no download) by each optimizer, at the
learning rate that did best in a small sweep (see the README).

Middle and right panels: what the RMSprop literature claims. On a
non-stationary objective, a regression whose true weights drift during
training, AdaGrad's effective step size decays like 1/sqrt(t) and it falls
behind the target, while RMSprop's moving average forgets and keeps tracking.

The left panel also shows RMSprop's weakness at a constant learning rate: once
the classifier fits its training set, the gradients shrink but RMSprop's steps
do not (its average of squared gradients shrinks with them, and with decay 0.9
it forgets in about 10 steps), so a batch whose gradient is suddenly larger
gets a step of up to sqrt(10) times the learning rate per weight and the
training loss jumps before it recovers. The summary counts these jumps.

Run:  python examples/demo.py [--steps 1500] [--drift-steps 20000] [--out demo_output]
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
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import rmsprop_jax

# name -> (optimizer factory, learning rate chosen by the sweep in the README)
OPTIMIZERS = {
    "RMSprop (rmsprop_jax)": (lambda lr: rmsprop_jax.rmsprop(lr, decay=0.9), 3e-3),
    "AdaGrad": (lambda lr: optax.adagrad(lr), 0.3),
    "SGD + momentum 0.9": (lambda lr: optax.sgd(lr, momentum=0.9), 0.3),
    "Adam": (lambda lr: optax.adam(lr), 3e-3),
}


# --------------------------------------------------------------------------
# Part 1: a classifier on real data.


def load_data(seed: int = 0):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int32), test_size=0.2, random_state=seed, stratify=y)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = 128):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def train_classifier(name, tx, data, steps, batch_size=64, seed=0):
    """Trains one MLP; records each batch's loss and, after every step, the loss
    on the whole training set (the objective itself, free of batch noise)."""
    x_train, x_test, y_train, y_test = data
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(seed)  # the same batches for every optimizer
    losses, train_losses = [], []
    start = time.perf_counter()
    with tqdm(range(steps), desc=f"{name:<22}", ncols=90, leave=True) as bar:
        for step in bar:
            idx = rng.choice(len(x_train), batch_size, replace=False)
            losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
            train_losses.append(float(evaluate(model, x_train, y_train)[0]))
            if step % 50 == 0:
                bar.set_postfix(loss=f"{train_losses[-1]:.3f}")
    wall = time.perf_counter() - start
    _, test_acc = evaluate(model, x_test, y_test)
    return {
        "losses": losses,
        "train_losses": train_losses,
        "train_loss": train_losses[-1],
        "test_accuracy": float(test_acc),
        "wall_s": wall,
    }


def loss_jumps(train_losses, factor=3.0):
    """Steps after which the training-set loss was more than ``factor`` times
    what it was before the step."""
    x = np.asarray(train_losses)
    return [int(t) for t in np.nonzero(x[1:] > factor * x[:-1])[0] + 1]


# --------------------------------------------------------------------------
# Part 2: a target that drifts during training.


def adagrad_step_size(lr, eps=1e-7):
    """AdaGrad's per-coordinate step size lr / sqrt(sum of g^2 + eps), median over
    the coordinates, from optax.adagrad's state (the counterpart of RMSprop's)."""

    def median(state):
        rss = jax.tree.leaves(state[0].sum_of_squares)[0]
        return jnp.median(lr * jax.lax.rsqrt(rss + eps)), jnp.float32(jnp.nan)

    return median


def rmsprop_step_size(opt):
    """RMSprop's per-coordinate step size lr / d, median and max over the
    coordinates, as rmsprop_jax.step_size_stats reads it from the state."""

    def stats(state):
        s = rmsprop_jax.step_size_stats(opt, state)
        return s.median, s.max

    return stats


def drifting_regression(tx, step_size, steps=3000, dim=20, batch=32, period=1000.0, seed=0):
    """Online least squares where the true weights rotate slowly; returns the
    distance to the current target and, per step, the optimizer's per-coordinate
    step size (median and max over the coordinates; ``step_size`` reads them
    from the state)."""
    key = jax.random.PRNGKey(seed)
    k_phase, k_data = jax.random.split(key)
    phase = jax.random.uniform(k_phase, (dim,), maxval=2 * jnp.pi)

    def target(t):
        return jnp.sin(2 * jnp.pi * t / period + phase)

    def step(carry, t):
        w, state = carry
        x = jax.random.normal(jax.random.fold_in(k_data, t), (batch, dim))
        y = x @ target(t)
        grad = jax.grad(lambda w: 0.5 * jnp.mean((x @ w - y) ** 2))(w)
        updates, state = tx.update(grad, state, w)
        gap = jnp.linalg.norm(w - target(t))
        return (w + updates, state), (gap, step_size(state))

    w0 = jnp.zeros(dim)
    _, (gap, (median, largest)) = jax.lax.scan(step, (w0, tx.init(w0)), jnp.arange(steps))
    return np.asarray(gap), np.asarray(median), np.asarray(largest)


# --------------------------------------------------------------------------


def smooth(x, k):
    """Moving average over ``k`` steps (fewer if the run is shorter)."""
    k = max(1, min(k, len(x)))
    return np.convolve(x, np.ones(k) / k, mode="valid")


def plot(results, drift, period, out: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2, ax3) = plt.subplots(
        1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.15, 1.15, 0.85]}
    )
    for name, r in results.items():
        ax1.plot(r["train_losses"], lw=1, label=f"{name} ({r['test_accuracy']:.1%} test)")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss on the whole training set, after each step")
    ax1.set_title("Digits classifier (Flax NNX, scikit-learn digits)")
    ax1.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    rms = next(r for n, r in results.items() if n.startswith("RMSprop"))
    jumps = loss_jumps(rms["train_losses"])
    if jumps:  # point at the largest jump: RMSprop's late-training spikes
        t = max(jumps, key=lambda j: rms["train_losses"][j] / rms["train_losses"][j - 1])
        ax1.annotate(
            f"RMSprop: {len(jumps)} steps where the loss\nrose more than 3x (constant lr)",
            xy=(t, rms["train_losses"][t]),
            xytext=(0.35, 0.62),
            textcoords="axes fraction",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "lw": 0.8},
        )

    window = max(1, min(200, period // 5))
    settled = []  # the distance after the first quarter of the run, to set the y range
    for name, (gap, median, largest) in drift.items():
        curve = smooth(gap, window)
        (line,) = ax2.plot(curve, label=name)
        ax3.plot(smooth(median, window), color=line.get_color(), label=f"{name}, median")
        if np.all(np.isfinite(largest)):
            ax3.plot(smooth(largest, window), color=line.get_color(), ls="--", label=f"{name}, max")
        settled.append(curve[len(curve) // 4 :])
    top = max(float(np.max(c)) for c in settled)
    ax2.set_ylim(0, 1.5 * top)  # the first steps, far from the target, run off the top
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"distance |w - w*(t)| (mean of {window} steps)")
    ax2.set_title(f"Drifting target (rotation period {period} steps)")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right")
    ax3.set_xlabel("step")
    ax3.set_ylabel(f"lr / d per coordinate (mean of {window} steps)")
    ax3.set_title("Per-coordinate step size (step_size_stats)")
    ax3.set_yscale("log")
    ax3.grid(alpha=0.3)
    ax3.legend(loc="lower right")
    for ax in (ax1, ax2, ax3):
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=1500,
        help="training steps (batches of 64) of the digits classifier, for each of the four "
        "optimizers (default: %(default)s)",
    )
    parser.add_argument(
        "--drift-steps",
        type=int,
        default=20000,
        help="steps of the drifting-target regression, for AdaGrad and RMSprop "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--drift-period",
        type=int,
        default=1000,
        help="steps for the drifting target to complete one rotation (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="demo_output",
        help="folder for demo.png and results.json, created if missing (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "drift_steps", "drift_period"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_data()
    print(f"Digits: {len(data[0])} training and {len(data[1])} test images of 8x8 pixels.")
    results = {
        name: train_classifier(name, make(lr), data, args.steps)
        for name, (make, lr) in OPTIMIZERS.items()
    }
    print(
        f"\n{'optimizer':<24}{'learning rate':>14}{'train loss':>12}{'test acc':>10}{'wall s':>8}"
    )
    for name, r in results.items():
        lr = OPTIMIZERS[name][1]
        print(
            f"{name:<24}{lr:>14g}{r['train_loss']:>12.4f}{r['test_accuracy']:>10.3f}"
            f"{r['wall_s']:>8.1f}"
        )
    print(f"(train loss: on all {len(data[0])} training images after {args.steps} steps)")
    for name, r in results.items():
        jumps = loss_jumps(r["train_losses"])
        if jumps:
            t = max(jumps, key=lambda j: r["train_losses"][j] / r["train_losses"][j - 1])
            print(
                f"{name}: the training loss rose more than 3x in one step {len(jumps)} times, "
                f"the largest {r['train_losses'][t - 1]:.4f} -> {r['train_losses'][t]:.4f} "
                f"at step {t + 1}"
            )

    fifth = max(1, args.drift_steps // 5)
    print(
        f"\nDrifting target: online least squares, 20 weights rotating with a period of "
        f"{args.drift_period} steps, {args.drift_steps} steps.\nLearning rates: the best of "
        "a sweep over the first 3000 steps at period 1000."
    )
    if args.drift_steps < args.drift_period:
        turned = args.drift_steps / args.drift_period
        print(f"(Shorter than one period: the target turns {turned:.0%} of the way round.)")
    rms = rmsprop_jax.rmsprop(0.01)
    period = float(args.drift_period)
    drift = {
        "AdaGrad (lr 1.0)": drifting_regression(
            optax.adagrad(1.0), adagrad_step_size(1.0), args.drift_steps, period=period
        ),
        "RMSprop (lr 0.01)": drifting_regression(
            rms, rmsprop_step_size(rms), args.drift_steps, period=period
        ),
    }
    head = f"first {fifth}"
    tail = f"last {fifth}"
    print(f"  {'':<20}{'distance to target':>26}{'median step size lr/d':>26}")
    print(f"  {'':<20}{head:>13}{tail:>13}{head:>13}{tail:>13}")
    for name, (gap, median, _) in drift.items():
        print(
            f"  {name:<20}{gap[:fifth].mean():>13.4f}{gap[-fifth:].mean():>13.4f}"
            f"{median[:fifth].mean():>13.3f}{median[-fifth:].mean():>13.3f}"
        )

    figure = out / "demo.png"
    plot(results, drift, args.drift_period, figure)
    summary = {
        "settings": vars(args),
        "classifier": {
            n: {
                **{k: v for k, v in r.items() if k not in ("losses", "train_losses")},
                "loss_jumps_over_3x": loss_jumps(r["train_losses"]),
            }
            for n, r in results.items()
        },
        "drift": {
            n: {
                "steps_per_fifth": fifth,
                "distance_first_fifth": float(g[:fifth].mean()),
                "distance_last_fifth": float(g[-fifth:].mean()),
                "median_step_size_first_fifth": float(e[:fifth].mean()),
                "median_step_size_last_fifth": float(e[-fifth:].mean()),
            }
            for n, (g, e, _) in drift.items()
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nFigure: {figure}   numbers: {out / 'results.json'}")
    return {"classifier": results, "drift": drift}


if __name__ == "__main__":
    main()
