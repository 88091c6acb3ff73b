"""The main demo (`make demo`): RMSprop against AdaGrad, SGD with momentum and Adam.

Left panel: a Flax NNX classifier trained on scikit-learn's bundled
handwritten digits (real data, no download) by each optimizer, at the
learning rate that did best in a small sweep (see the README).

Right panel: what the RMSprop literature claims. On a non-stationary
objective, a regression whose true weights drift during training, AdaGrad's
effective step size decays like 1/sqrt(t) and it falls behind the target,
while RMSprop's moving average forgets and keeps tracking.

Run:  python examples/demo.py [--steps 600] [--out demo_output]
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
    x_train, x_test, y_train, y_test = data
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(seed)  # the same batches for every optimizer
    losses = []
    start = time.perf_counter()
    with tqdm(range(steps), desc=f"{name:<22}", ncols=90, leave=True) as bar:
        for step in bar:
            idx = rng.choice(len(x_train), batch_size, replace=False)
            losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    wall = time.perf_counter() - start
    train_loss, _ = evaluate(model, x_train, y_train)
    _, test_acc = evaluate(model, x_test, y_test)
    return {
        "losses": losses,
        "train_loss": float(train_loss),
        "test_accuracy": float(test_acc),
        "wall_s": wall,
    }


# --------------------------------------------------------------------------
# Part 2: a target that drifts during training.


def drifting_regression(tx, steps=3000, dim=20, batch=32, period=1000.0, seed=0):
    """Online least squares where the true weights rotate slowly; returns the
    distance to the current target and the mean effective step size per step."""
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
        # step taken per unit gradient: the optimizer's effective learning rate
        eff = jnp.linalg.norm(updates) / (jnp.linalg.norm(grad) + 1e-12)
        return (w + updates, state), (gap, eff)

    w0 = jnp.zeros(dim)
    _, (gap, eff) = jax.lax.scan(step, (w0, tx.init(w0)), jnp.arange(steps))
    return np.asarray(gap), np.asarray(eff)


# --------------------------------------------------------------------------


def smooth(x, k=25):
    return np.convolve(x, np.ones(k) / k, mode="valid")


def plot(results, drift, out: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, r in results.items():
        ax1.plot(smooth(r["losses"]), label=f"{name} ({r['test_accuracy']:.1%} test)")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (moving average of 25 batches)")
    ax1.set_title("Digits classifier (Flax NNX, scikit-learn digits)")
    ax1.legend()
    ax1.grid(alpha=0.3)

    for name, (gap, _) in drift.items():
        ax2.plot(smooth(gap, 200), label=name)
    ax2.set_xlabel("step")
    ax2.set_ylabel("distance to the drifting target |w - w*(t)| (avg of 200 steps)")
    ax2.set_title("Non-stationary objective: the target keeps drifting")
    ax2.set_ylim(0.02, 0.08)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper left")
    inset = ax2.inset_axes([0.55, 0.62, 0.42, 0.33])
    for _, (_, eff) in drift.items():
        inset.plot(smooth(eff, 200))
    inset.set_title("effective step size |update| / |gradient|", fontsize=8)
    inset.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="classifier steps per optimizer")
    parser.add_argument("--drift-steps", type=int, default=20000)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args(argv)
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

    print("\nDrifting target (online least squares, 20 weights, period 1000 steps);")
    print("each optimizer at its best learning rate over the first 3000 steps:")
    drift = {
        "AdaGrad (lr 1.0)": drifting_regression(optax.adagrad(1.0), args.drift_steps),
        "RMSprop (lr 0.01)": drifting_regression(rmsprop_jax.rmsprop(0.01), args.drift_steps),
    }
    fifth = max(1, args.drift_steps // 5)
    print(f"  {'':<20}{'distance to target':>26}{'effective step size':>26}")
    print(f"  {'':<20}{'first fifth':>13}{'last fifth':>13}{'first fifth':>13}{'last fifth':>13}")
    for name, (gap, eff) in drift.items():
        print(
            f"  {name:<20}{gap[:fifth].mean():>13.4f}{gap[-fifth:].mean():>13.4f}"
            f"{eff[:fifth].mean():>13.3f}{eff[-fifth:].mean():>13.3f}"
        )

    figure = out / "demo.png"
    plot(results, drift, figure)
    summary = {
        "classifier": {
            n: {k: v for k, v in r.items() if k != "losses"} for n, r in results.items()
        },
        "drift": {
            n: {
                "distance_first_fifth": float(g[:fifth].mean()),
                "distance_last_fifth": float(g[-fifth:].mean()),
                "step_size_first_fifth": float(e[:fifth].mean()),
                "step_size_last_fifth": float(e[-fifth:].mean()),
            }
            for n, (g, e) in drift.items()
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nFigure: {figure}   numbers: {out / 'results.json'}")
    return {"classifier": results, "drift": drift}


if __name__ == "__main__":
    main()
