"""What stochastic parameter rounding costs: step time with and without it, bfloat16 parameters.

On the ResNet-50-shaped parameter tree of ``trees.py`` (25.6 M parameters,
161 leaves) in bfloat16, one jitted optimizer step (``update`` and
``optax.apply_updates``, parameters and state donated) of

  bf16 params                      rmsprop_jax.rmsprop(1e-3): float32 state, the
                                   parameters rounded to nearest
  bf16 params + param rounding     the same, then stochastic_param_rounding()
  bf16 params and state            rmsprop(1e-3, nu_dtype=bf16): all rounded to nearest
  bf16 params and state, rounded   rmsprop(1e-3, nu_dtype=bf16, stochastic_rounding=True),
                                   then stochastic_param_rounding()

and, for scale, float32 parameters and state. The steps are timed in
interleaved rounds (each round times every step once, in a rotating order);
the ratios are taken within a round, so a slow moment of a shared machine
slows both sides of a ratio. Reported: the median over rounds, and the
spread as the lowest and highest round.

Usage: python benchmarks/param_rounding.py [--reps 7] [--quick]
From bench.py: ``param_rounding.measure(reps, quick)`` returns the numbers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmsprop_jax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import timing  # noqa: E402
import trees  # noqa: E402

F32, BF16 = jnp.float32, jnp.bfloat16

# name -> (parameter dtype, optimizer); the pairs whose ratio is reported.
STEPS = {
    "float32 params and state": (F32, lambda: rmsprop_jax.rmsprop(1e-3)),
    "bf16 params": (BF16, lambda: rmsprop_jax.rmsprop(1e-3)),
    "bf16 params + param rounding": (
        BF16,
        lambda: optax.chain(rmsprop_jax.rmsprop(1e-3), rmsprop_jax.stochastic_param_rounding()),
    ),
    "bf16 params and state": (BF16, lambda: rmsprop_jax.rmsprop(1e-3, nu_dtype=BF16)),
    "bf16 params and state, rounded": (
        BF16,
        lambda: optax.chain(
            rmsprop_jax.rmsprop(1e-3, nu_dtype=BF16, stochastic_rounding=True),
            rmsprop_jax.stochastic_param_rounding(),
        ),
    ),
}
RATIOS = {
    "param rounding, float32 state": ("bf16 params + param rounding", "bf16 params"),
    "stochastic rounding of params and state, bf16 state": (
        "bf16 params and state, rounded",
        "bf16 params and state",
    ),
}


def stepper(dtype, opt, base):
    """A function ``run(n)`` doing ``n`` donated steps from the float32 tree
    ``base`` cast to ``dtype``; compiled and warmed up."""
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), base)
    grads = jax.tree.map(lambda x: jnp.asarray(1e-3 * x, dtype), base)

    return timing.stepper(opt, params, grads)


def measure(reps: int = 7, quick: bool = False) -> dict:
    """Median step time (ms) of each step and the median, lowest and highest
    per-round ratio of each pair in ``RATIOS``. ``quick``: 3 rounds of ~20 ms."""
    if quick:
        reps = min(reps, 3)
    target_s = 0.02 if quick else 0.1
    shapes = trees.resnet50()
    rng = np.random.default_rng(0)
    base = {name: rng.standard_normal(shape, np.float32) for name, shape in shapes.items()}
    runners = {name: stepper(dtype, make(), base) for name, (dtype, make) in STEPS.items()}
    rounds = timing.interleaved_rounds(runners, reps, target_s)
    names = list(runners)

    out: dict = {
        "tree": f"ResNet-50, {trees.count(shapes):,} parameters, {len(shapes)} leaves",
        "rounds": reps,
        "machine": f"jax {jax.__version__} on {jax.devices()[0].platform}",
        "step ms": {n: 1e3 * statistics.median(r[n] for r in rounds) for n in names},
        "ratios": {},
    }
    for label, (num, den) in RATIOS.items():
        out["ratios"][label] = timing.spread(r[num] / r[den] for r in rounds)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--reps", type=int, default=7, help="interleaved rounds (each times every step once)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="at most 3 rounds of about 20 ms per step: a fast check",
    )
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    result = measure(args.reps, args.quick)
    print(f"{result['tree']}; {result['machine']}; median of {result['rounds']} rounds")
    for name, ms in result["step ms"].items():
        print(f"  {name:<34}{ms:9.2f} ms")
    for label, r in result["ratios"].items():
        print(
            f"  {label}: {r['median']:.2f}x the step without "
            f"(rounds: {r['lowest']:.2f} to {r['highest']:.2f})"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
