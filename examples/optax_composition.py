"""rmsprop_jax composed with Optax: clipping, a warmup-cosine schedule, masked
weight decay, multi_transform, MultiSteps gradient accumulation and
apply_if_finite, all in one optimizer.

The task is a small regression with two parameter groups: an "encoder" trained
by RMSprop and a "head" trained by plain SGD. Every third batch of one run has
a NaN injected to show apply_if_finite skipping it.

Run:  python examples/optax_composition.py [--steps 200]
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
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=3e-3, warmup_steps=max(1, steps // 10), decay_steps=steps
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--inject-nan", action="store_true", help="NaN in every third batch")
    args = parser.parse_args(argv)

    key = jax.random.PRNGKey(0)
    true_w = jax.random.normal(jax.random.fold_in(key, 1), (8, 1))
    params = init_params(key)
    tx = make_optimizer(args.steps)
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
    print(
        f"loss {np.mean(finite[:10]):.4f} -> {np.mean(finite[-10:]):.4f}; "
        f"{skipped} non-finite batches skipped; "
        f"apply_if_finite counted {int(state.total_notfinite)} of them"
    )
    return {"losses": losses, "params": params, "state": state, "skipped": skipped}


if __name__ == "__main__":
    main()
