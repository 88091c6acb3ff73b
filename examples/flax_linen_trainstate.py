"""A Flax Linen classifier trained with rmsprop_jax through `flax.training.train_state.TrainState`.

The data is scikit-learn's bundled handwritten digits (no download). The
optimizer is RMSprop with momentum 0.9, decoupled weight decay 1e-4 and a
cosine decay of the learning rate to zero over the run.

Run:  python examples/flax_linen_trainstate.py [--steps 300] [--learning-rate 3e-3]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import rmsprop_jax


class MLP(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


@jax.jit
def train_step(state: train_state.TrainState, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=300,
        help="training steps (batches of 64); the cosine schedule decays to zero over "
        "them (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=3e-3,
        help="peak learning rate, at the first step (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y.astype(np.int32), test_size=0.2, random_state=0
    )
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 64)))["params"]
    tx = rmsprop_jax.rmsprop(
        optax.cosine_decay_schedule(args.learning_rate, args.steps),
        momentum=0.9,
        weight_decay=1e-4,
    )
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    rng = np.random.default_rng(0)
    losses = []
    for _ in tqdm(range(args.steps), ncols=80):
        idx = rng.choice(len(x_train), 64, replace=False)
        state, loss = train_step(state, x_train[idx], y_train[idx])
        losses.append(float(loss))
    logits = state.apply_fn({"params": state.params}, x_test)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    last = min(20, len(losses))
    print(
        f"batch loss: first {losses[0]:.3f}, mean of the last {last} "
        f"{np.mean(losses[-last:]):.4f}; test accuracy {acc:.3f} after {args.steps} steps"
    )
    return {"losses": losses, "test_accuracy": acc, "state": state}


if __name__ == "__main__":
    main()
