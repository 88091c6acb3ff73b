"""rmsprop_jax composed with Optax: clipping, a warmup-cosine schedule, masked
weight decay, multi_transform, MultiSteps gradient accumulation and
apply_if_finite, all in one optimizer.

The task is a small regression with two parameter groups: an "encoder" trained
by RMSprop and a "head" trained by plain SGD. MultiSteps averages the
gradients of `--accumulate` batches into one optimizer update, so the
learning-rate schedule counts updates, not batches. With `--inject-nan`,
every third batch has a NaN, which apply_if_finite skips.

Run:  python examples/optax_composition.py [--steps 200] [--accumulate 2] [--inject-nan]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import rmsprop_jax


def make_optimizer(steps: int, accumulate: int = 2) -> optax.GradientTransformation:
    """The whole optimizer for ``steps`` batches, ``accumulate`` batches per update."""
    # The schedule is evaluated once per optimizer update (inside MultiSteps).
    updates = max(1, steps // accumulate)
    warmup = max(1, updates // 10)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=3e-3, warmup_steps=warmup, decay_steps=max(updates, warmup + 1)
    )
    # Weight decay on matrices only (not biases), through optax.masked.
    decay_matrices = optax.masked(
        optax.add_decayed_weights(1e-4), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    )
    encoder_tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        decay_matrices,
        rmsprop_jax.rmsprop(schedule, decay=0.9, momentum=0.9),
    )
    tx = optax.multi_transform(
        {"encoder": encoder_tx, "head": optax.sgd(1e-2)},
        param_labels={"encoder": "encoder", "head": "head"},
    )
    tx = optax.MultiSteps(tx, every_k_schedule=accumulate)  # accumulate gradients
    return optax.apply_if_finite(tx, max_consecutive_errors=5)


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "encoder": {"w": 0.3 * jax.random.normal(k1, (8, 16)), "b": jnp.zeros(16)},
        "head": {"w": 0.3 * jax.random.normal(k2, (16, 1)), "b": jnp.zeros(1)},
    }


def predict(params, x):
    h = jnp.tanh(x @ params["encoder"]["w"] + params["encoder"]["b"])
    return h @ params["head"]["w"] + params["head"]["b"]


def count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1."""
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("ch") else "s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="batches of 32 to train on (default: %(default)s)"
    )
    parser.add_argument(
        "--accumulate",
        type=int,
        default=2,
        help="batches averaged into each optimizer update by optax.MultiSteps "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--inject-nan",
        action="store_true",
        help="put a NaN in every third batch, to show optax.apply_if_finite skipping it",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "accumulate"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    key = jax.random.PRNGKey(0)
    true_w = jax.random.normal(jax.random.fold_in(key, 1), (8, 1))
    params = init_params(key)
    tx = make_optimizer(args.steps, args.accumulate)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((predict(p, x) - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses, skipped = [], 0
    for t in tqdm(range(args.steps), ncols=80):
        x = jax.random.normal(jax.random.fold_in(key, 100 + t), (32, 8))
        y = jnp.sin(x @ true_w)
        if args.inject_nan and t % 3 == 2:
            x = x.at[0, 0].set(jnp.nan)
            skipped += 1
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    finite = [v for v in losses if np.isfinite(v)]
    k = max(1, min(10, len(finite) // 2))
    updates = int(state.inner_state.gradient_step)  # apply_if_finite -> MultiSteps
    print(
        f"batch loss (before each step): mean of the first {k} {np.mean(finite[:k]):.4f}, "
        f"of the last {k} {np.mean(finite[-k:]):.4f}"
    )
    print(
        f"{count(len(losses), 'batch')}, {count(updates, 'optimizer update')} of "
        f"{count(args.accumulate, 'batch')} each (the first at learning rate 0, where the "
        f"warmup starts); {count(skipped, 'batch')} with a NaN, "
        f"{int(state.total_notfinite)} skipped by apply_if_finite"
    )
    if updates == 0:
        print(f"No update yet: MultiSteps needs {args.accumulate} finite batches for one.")
    return {"losses": losses, "params": params, "state": state, "skipped": skipped}


if __name__ == "__main__":
    main()
