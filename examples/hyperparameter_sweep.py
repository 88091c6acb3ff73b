"""A learning-rate sweep in one compiled program: `optax.inject_hyperparams`
turns rmsprop_jax's learning rate and decay into arrays, and `jax.vmap` trains
a population of models, one per learning rate, at once.

The task is logistic regression on scikit-learn's bundled digits (0-9 as
10 classes). Eight learning rates, log-spaced from 1e-4 to 10**-0.5, each
with decay 0.9, train on the same batches of 128.

Run:  python examples/hyperparameter_sweep.py [--steps 300]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from tqdm import tqdm

import rmsprop_jax


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=300,
        help="training steps, each one step of all eight models (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    x, y = load_digits(return_X_y=True)
    x = jnp.asarray(x / 16.0, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    learning_rates = jnp.logspace(-4, -0.5, 8)
    decays = jnp.full_like(learning_rates, 0.9)

    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.0, decay=0.9)

    def init(lr, decay):
        params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
        state = opt.init(params)
        state.hyperparams["learning_rate"] = lr
        state.hyperparams["decay"] = decay
        return params, state

    def loss_fn(params, xb, yb):
        logits = xb @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def train_step(params, state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    # One program for the whole population: vmap over (params, state); the data is shared.
    population_step = jax.jit(jax.vmap(train_step, in_axes=(0, 0, None, None)))
    params, state = jax.vmap(init)(learning_rates, decays)

    rng = np.random.default_rng(0)
    history = []
    for _ in tqdm(range(args.steps), ncols=80):
        idx = rng.choice(len(x), 128, replace=False)
        params, state, losses = population_step(params, state, x[idx], y[idx])
        history.append(np.asarray(losses))
    history = np.stack(history)
    final = jax.vmap(loss_fn, in_axes=(0, None, None))(params, x, y)
    print(f"Loss on all {len(x)} digits after {args.steps} steps:")
    for lr, loss in zip(np.asarray(learning_rates), np.asarray(final)):
        print(f"learning rate {lr:9.2e}   loss {loss:.4f}")
    best = int(np.argmin(final))
    print(f"best learning rate: {float(learning_rates[best]):.2e}")
    return {
        "learning_rates": np.asarray(learning_rates),
        "final_loss": np.asarray(final),
        "history": history,
        "step_fn": population_step,
    }


if __name__ == "__main__":
    main()
