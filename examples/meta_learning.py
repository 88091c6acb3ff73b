"""Meta-learning the learning rate: the gradient of a validation loss with
respect to rmsprop_jax's learning rate, taken through several unrolled
optimizer steps, then used to tune the learning rate by gradient descent.

rmsprop_jax's update is an ordinary differentiable JAX function of its
hyperparameters, so `jax.grad` goes straight through `optimizer.update`. The
task: 10 unrolled RMSprop steps (decay 0.9, momentum 0.5) on a linear
regression, from a learning rate of 0.01; Adam (0.1) tunes its logarithm.

Run:  python examples/meta_learning.py [--steps 50]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import rmsprop_jax

UNROLL = 10


def make_task(seed: int = 0):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    w_true = jax.random.normal(k1, (5,))
    x_train = jax.random.normal(k2, (UNROLL, 16, 5))
    x_val = jax.random.normal(k3, (64, 5))
    return w_true, x_train, x_train @ w_true, x_val, x_val @ w_true


def validation_loss(lr, task):
    """Train UNROLL steps from zero with learning rate `lr`; return the validation loss."""
    _, x_train, y_train, x_val, y_val = task
    opt = rmsprop_jax.rmsprop(lr, decay=0.9, momentum=0.5)
    w = jnp.zeros(5)
    state = opt.init(w)

    def step(carry, batch):
        w, state = carry
        xb, yb = batch
        grads = jax.grad(lambda w: jnp.mean((xb @ w - yb) ** 2))(w)
        updates, state = opt.update(grads, state, w)
        return (optax.apply_updates(w, updates), state), None

    (w, _), _ = jax.lax.scan(step, (w, state), (x_train, y_train))
    return jnp.mean((x_val @ w - y_val) ** 2)


meta_grad = jax.jit(jax.value_and_grad(validation_loss))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=50,
        help="meta-steps: updates of the learning rate, each through 10 unrolled "
        "RMSprop steps (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    task = make_task()
    log_lr = jnp.log(jnp.asarray(0.01))
    meta_opt = optax.adam(0.1)
    meta_state = meta_opt.init(log_lr)
    history = []  # (learning rate, validation loss at that rate)
    for _ in tqdm(range(args.steps), ncols=80):
        loss, grad_lr = meta_grad(jnp.exp(log_lr), task)
        history.append((float(jnp.exp(log_lr)), float(loss)))
        grad_log = grad_lr * jnp.exp(log_lr)  # chain rule through lr = exp(log_lr)
        updates, meta_state = meta_opt.update(grad_log, meta_state)
        log_lr = optax.apply_updates(log_lr, updates)
    final_lr = jnp.exp(log_lr)
    history.append((float(final_lr), float(validation_loss(final_lr, task))))
    meta_steps = f"{args.steps} meta-step" + "s" * (args.steps != 1)
    print(
        f"after {meta_steps}: learning rate {history[0][0]:.4f} -> {history[-1][0]:.4f}, "
        f"validation loss after {UNROLL} RMSprop steps {history[0][1]:.4f} -> "
        f"{history[-1][1]:.4f}"
    )
    return {"history": np.asarray(history), "task": task}


if __name__ == "__main__":
    main()
