"""A Flax NNX classifier trained with rmsprop_jax on real data.

The data is scikit-learn's bundled handwritten digits (1797 8x8 images, no
download). The optimizer is RMSprop after global-norm clipping:

    optax.chain(optax.clip_by_global_norm(1.0), rmsprop_jax.rmsprop(...))

with decay 0.9, momentum 0.9 and a constant learning rate.

Run:  python examples/flax_nnx_classifier.py [--steps 300] [--batch-size 128]
"""

from __future__ import annotations

import argparse
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


def load_data(seed: int = 0):
    """Digits scaled to [0, 1], split 80/20 into train and test."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int32), test_size=0.2, random_state=seed, stratify=y)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = 64):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="images per step, drawn without replacement from the 1437 training images "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=3e-3,
        help="RMSprop's learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the train/test split, the initial weights and the batches "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    x_train, x_test, y_train, y_test = load_data(args.seed)
    if not 1 <= args.batch_size <= len(x_train):
        parser.error(f"--batch-size must be between 1 and {len(x_train)}, got {args.batch_size}")
    model = MLP(nnx.Rngs(args.seed))
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        rmsprop_jax.rmsprop(args.learning_rate, decay=0.9, momentum=0.9),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    rng = np.random.default_rng(args.seed)
    print(f"Training a 64-64-10 MLP on {len(x_train)} digits, testing on {len(x_test)}.")
    start = time.perf_counter()
    losses = []
    every = max(1, args.steps // 10)  # about ten reports, each the mean since the last
    reported = 0
    with tqdm(range(1, args.steps + 1), ncols=80) as bar:
        for step in bar:
            idx = rng.choice(len(x_train), args.batch_size, replace=False)
            losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
            if step == 1 or step % every == 0 or step == args.steps:
                window, reported = losses[reported:], step
                bar.write(
                    f"step {step:5d}   batch loss {np.mean(window):.4f} "
                    f"(mean of the last {len(window)})"
                )
    test_acc = float(accuracy(model, x_test, y_test))
    print(
        f"test accuracy {test_acc:.3f} after {args.steps} steps "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return {"losses": losses, "test_accuracy": test_acc}


if __name__ == "__main__":
    main()
