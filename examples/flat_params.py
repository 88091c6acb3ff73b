"""Many small leaves: own the parameters as one flat vector.

An optimizer step over a tree of many small arrays costs a fixed amount per
leaf (a loop, its launch and its bookkeeping in the compiled program), so on
a model of a thousand biases and norm scales the step is dispatch-bound:
milliseconds for a few hundred thousand numbers. RMSprop is elementwise, so
it gives the same numbers on one vector holding all the parameters. This
example keeps the parameters flat:

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    state = opt.init(flat)

    @jax.jit
    def train_step(flat, state, batch):
        loss, g = jax.value_and_grad(lambda f: loss_fn(unravel(f), batch))(flat)
        updates, state = opt.update(g, state, flat)
        return optax.apply_updates(flat, updates), state, loss

The model sees its usual tree (``unravel`` inside the jitted step is slices
and reshapes, fused into their consumers), the gradient is taken with respect
to the flat vector (one concatenated buffer), and the optimizer state and
update are one vector each: one loop per output instead of one per leaf.

The model is a residual MLP of ``--layers`` narrow blocks, each with a
kernel, a bias, a scale and a shift (4 leaves a block), fitted to a fixed
random teacher network. It is trained twice from the same start on the same
batches, per leaf and flat, with the same optimizer; the two runs agree to
float32 rounding (printed: the largest difference of the final parameters and
of the losses). Then the optimizer step alone (update and apply, jitted,
parameters and state donated) and the whole train step are timed for both, in
interleaved rounds, and the speed-up reported as the median over rounds with
the lowest and highest round.

Which rmsprop_jax options carry over to a flat vector. Everything elementwise
gives the same numbers as per leaf: ``decay``, ``eps``, ``initial_scale``,
``eps_in_sqrt``, ``centered``, ``momentum``, ``nesterov``,
``bias_correction``, ``lr_in_momentum``, schedules, ``maximize``, a scalar
``weight_decay`` in either mode, ``nu_dtype`` / ``mu_dtype`` and
``stochastic_rounding`` (the random bits are drawn for the flat vector, so
the rounding is equally unbiased but need not be bit for bit the per-leaf
run's). What does not carry over:

- ``factored=True`` needs a leaf's matrix shape; a flat vector is 1-D and is
  never factored (the option is accepted and changes nothing). Keep factored
  matrices as leaves of their own if you want both.
- ``weight_decay_mask`` as a tree of per-leaf booleans, or a callable that
  looks at the tree: the optimizer sees one leaf. It does accept a boolean
  *array* with the flat vector's shape, made by broadcasting each leaf's flag
  to the leaf's shape and flattening that tree with the same
  ``ravel_pytree`` (``--mask-norms`` does this: no decay on biases,
  scales and shifts).
- Parameters of mixed dtypes: ``ravel_pytree`` promotes them to one dtype
  (bfloat16 and float32 leaves become a float32 vector; ``unravel`` casts
  back), so the state and the update are in the promoted dtype. Keep one flat
  vector per dtype if that matters.
- Per-leaf sharding: a flat vector is one array; shard it as one.

The cost of the flat layout is a concatenation of the gradient inside the
train step (one extra write and read of the gradient), paid back many times
over when the leaves are small; for a few large leaves it buys nothing.

Run:  python examples/flat_params.py [--layers 60] [--steps 200] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import rmsprop_jax


def init_params(rng: np.random.Generator, layers: int, width: int) -> dict:
    """A residual MLP: an input and output projection, ``layers`` blocks of
    kernel, bias, scale and shift (float32; made with NumPy, no compilation)."""

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32) / np.sqrt(shape[0]))

    params: dict[str, Any] = {"w_in": normal(width, width), "w_out": normal(width, 1)}
    for i in range(layers):
        params[f"block{i:04d}"] = {
            "kernel": normal(width, width),
            "bias": jnp.zeros(width),
            "scale": jnp.ones(width),
            "shift": jnp.zeros(width),
        }
    return params


def forward(params: dict, x: jax.Array) -> jax.Array:
    h = x @ params["w_in"]
    blocks = sorted(k for k in params if k.startswith("block"))
    for name in blocks:
        b = params[name]
        h = h + (0.5 / len(blocks) ** 0.5) * jnp.tanh(h @ b["kernel"] + b["bias"])
        h = h * b["scale"] + b["shift"]
    return (h @ params["w_out"])[:, 0]


def loss_fn(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return jnp.mean((forward(params, x) - y) ** 2)


def make_batches(rng: np.random.Generator, steps: int, batch: int, width: int) -> list:
    """Inputs and the targets of a fixed random teacher (a 2-layer tanh MLP)."""
    w1 = rng.standard_normal((width, 4 * width)) / np.sqrt(width)
    w2 = rng.standard_normal(4 * width) / np.sqrt(4 * width)
    xs = rng.standard_normal((steps, batch, width))
    ys = np.tanh(xs @ w1) @ w2
    return [(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)) for x, y in zip(xs, ys)]


def decay_mask(params: dict) -> dict:
    """A boolean tree: weight decay on matrices only (not on biases, scales, shifts)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def flat_mask(params: dict, mask: dict) -> jax.Array:
    """A per-leaf boolean tree as one boolean array over the flat vector: each
    flag broadcast to its leaf's shape, flattened like the parameters."""
    full = jax.tree.map(lambda p, m: np.full(p.shape, m, bool), params, mask)
    return ravel_pytree(full)[0]


def make_optimizer(args: argparse.Namespace, mask: Any = None) -> optax.GradientTransformation:
    kw: dict[str, Any] = dict(decay=args.decay, centered=args.centered)
    if args.momentum:
        kw["momentum"] = args.momentum
    if args.weight_decay:
        kw["weight_decay"] = args.weight_decay
        kw["weight_decay_mask"] = mask
    return rmsprop_jax.rmsprop(args.lr, **kw)


def train(
    opt: optax.GradientTransformation,
    params: Any,
    batches: list,
    loss: Callable[[Any, Any], jax.Array],
) -> tuple[Any, list[float], Callable]:
    """Trains ``params`` (a tree, or the flat vector with ``loss`` unravelling
    it) on ``batches``; returns the final parameters, the losses and the
    jitted train step (reused for timing, so that it compiles once)."""

    @jax.jit
    def train_step(params, state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    state = opt.init(params)
    losses = []
    for batch in batches:
        params, state, value = train_step(params, state, batch)
        losses.append(value)
    return params, [float(v) for v in losses], train_step


def stepper(opt: optax.GradientTransformation, params: Any, grads: Any) -> Callable[[int], None]:
    """``run(n)``: ``n`` jitted, donated optimizer steps (update and apply)."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    box = {"params": jax.tree.map(jnp.copy, params), "state": opt.init(params)}

    def run(n):
        p, s = box["params"], box["state"]
        for _ in range(n):
            p, s = step(p, s, grads)
        jax.block_until_ready((p, s))
        box["params"], box["state"] = p, s

    run(2)  # compile and warm up
    return run


def train_stepper(train_step, opt, params, batch) -> Callable[[int], None]:
    """``run(n)``: ``n`` whole train steps (forward, backward, update) of the
    already compiled ``train_step`` from :func:`train`."""
    box = {"params": params, "state": opt.init(params)}

    def run(n):
        p, s = box["params"], box["state"]
        for _ in range(n):
            p, s, _ = train_step(p, s, batch)
        jax.block_until_ready((p, s))
        box["params"], box["state"] = p, s

    run(2)
    return run


def interleaved(runners: dict, reps: int, target_s: float = 0.05) -> list[dict[str, float]]:
    """Seconds per call of each runner in ``reps`` rounds (rotating order)."""
    inner = {}
    for name, run in runners.items():
        t0 = time.perf_counter()
        run(1)
        inner[name] = max(1, round(target_s / (time.perf_counter() - t0)))
    names, rounds = list(runners), []
    for r in range(reps):
        times = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[name](inner[name])
            times[name] = (time.perf_counter() - t0) / inner[name]
        rounds.append(times)
    return rounds


def speedup(rounds: list[dict[str, float]], slow: str, fast: str) -> dict:
    """Per-round ratio slow / fast: median, lowest and highest round, and the median times."""
    ratios = [r[slow] / r[fast] for r in rounds]
    return {
        f"{slow} ms": 1e3 * statistics.median(r[slow] for r in rounds),
        f"{fast} ms": 1e3 * statistics.median(r[fast] for r in rounds),
        "median": statistics.median(ratios),
        "lowest": min(ratios),
        "highest": max(ratios),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("Which rmsprop_jax options") : __doc__.index("The cost of")],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=60,
        help="residual blocks of the model (4 leaves each; default 60: 242 leaves). "
        "XLA's compile time of the unrolled forward and backward grows faster than "
        "linearly with it: 50 blocks took 10 s (per leaf) and 25 s (flat) to compile "
        "on 2 CPU cores, 500 blocks ran out of 24 GB of memory",
    )
    parser.add_argument("--width", type=int, default=8, help="width of each block (default 8)")
    parser.add_argument(
        "--steps", type=int, default=200, help="training steps of each run (default 200)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--decay", type=float, default=0.9, help="RMSprop decay (default 0.9)")
    parser.add_argument(
        "--momentum", type=float, default=0.0, help="momentum, 0 for none (default 0)"
    )
    parser.add_argument(
        "--centered", action="store_true", help="divide by the centered second moment"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="decoupled weight decay, a scalar (default 0: none)",
    )
    parser.add_argument(
        "--mask-norms",
        action="store_true",
        help="with --weight-decay: decay matrices only, through a per-leaf mask tree in "
        "the per-leaf run and the same mask as one flat boolean array in the flat run",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=7,
        help="interleaved timing rounds (each times every step once; 0 skips timing)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and data")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    params = init_params(rng, args.layers, args.width)
    flat, unravel = ravel_pytree(params)
    ravel = jax.jit(lambda tree: ravel_pytree(tree)[0])
    batches = make_batches(rng, args.steps, args.batch_size, args.width)
    n_leaves = len(jax.tree.leaves(params))
    print(f"{n_leaves} leaves, {flat.size:,} parameters, {args.steps} steps")

    tree_mask = flat_vec_mask = None
    if args.weight_decay and args.mask_norms:
        tree_mask = decay_mask(params)
        flat_vec_mask = flat_mask(params, tree_mask)

    def flat_loss(f, batch):
        return loss_fn(unravel(f), batch)

    tree_opt, flat_opt = make_optimizer(args, tree_mask), make_optimizer(args, flat_vec_mask)
    tree_final, tree_losses, tree_step = train(tree_opt, params, batches, loss_fn)
    flat_final, flat_losses, flat_step = train(flat_opt, flat, batches, flat_loss)
    param_diff = float(np.max(np.abs(np.asarray(ravel(tree_final)) - np.asarray(flat_final))))
    loss_diff = float(np.max(np.abs(np.subtract(tree_losses, flat_losses))))
    scale = float(np.max(np.abs(np.asarray(flat_final))))
    print(
        f"loss {tree_losses[0]:.4f} -> {tree_losses[-1]:.4f} (per leaf), "
        f"{flat_losses[0]:.4f} -> {flat_losses[-1]:.4f} (flat)"
    )
    print(
        f"largest difference, per leaf vs flat: parameters {param_diff:.2e} "
        f"(largest |parameter| {scale:.2f}), losses {loss_diff:.2e}"
    )
    result: dict[str, Any] = {
        "leaves": n_leaves,
        "parameters": int(flat.size),
        "tree_losses": tree_losses,
        "flat_losses": flat_losses,
        "max_param_diff": param_diff,
        "max_loss_diff": loss_diff,
    }

    if args.reps > 0:
        grads = jax.jit(jax.grad(loss_fn))(params, batches[0])
        runners = {
            "per-leaf step": stepper(make_optimizer(args, tree_mask), params, grads),
            "flat step": stepper(make_optimizer(args, flat_vec_mask), flat, ravel(grads)),
            "per-leaf train step": train_stepper(tree_step, tree_opt, params, batches[0]),
            "flat train step": train_stepper(flat_step, flat_opt, flat, batches[0]),
        }
        rounds = interleaved(runners, args.reps)
        result["optimizer step"] = speedup(rounds, "per-leaf step", "flat step")
        result["train step"] = speedup(rounds, "per-leaf train step", "flat train step")
        for label, key in (("optimizer step", "step"), ("train step", "train step")):
            s = result[label]
            print(
                f"{label}: per leaf {s[f'per-leaf {key} ms']:.3f} ms, flat "
                f"{s[f'flat {key} ms']:.3f} ms: {s['median']:.1f}x faster flat "
                f"(rounds: {s['lowest']:.1f}x to {s['highest']:.1f}x; median of {args.reps})"
            )
    return result


if __name__ == "__main__":
    main()
