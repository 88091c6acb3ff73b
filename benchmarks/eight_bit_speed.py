"""The 8-bit state's step time, beside float32 and bfloat16 state, and
bitsandbytes' 8-bit RMSprop beside torch's float32 one on the same shapes.

A part of ``make bench`` (``bench.py`` calls :func:`measure` and
:func:`report`); it also runs alone:

    python benchmarks/eight_bit_speed.py [--reps 7] [--tree resnet50|gpt2_small]

Every step is a donated, jitted update plus ``apply_updates``; the variants
are timed in interleaved rounds (``timing.interleaved_rounds``) and each ratio
is the median over rounds with its lowest and highest round.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import timing
import trees

import rmsprop_jax

EIGHT = rmsprop_jax.blockwise_8bit()

VARIANTS = {
    "float32 state": dict(),
    "bfloat16 state": dict(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16),
    "8-bit state": dict(nu_dtype=EIGHT, mu_dtype=EIGHT),
    "8-bit + stochastic rounding": dict(nu_dtype=EIGHT, mu_dtype=EIGHT, stochastic_rounding=True),
}


def _spread(values) -> dict:
    values = sorted(values)
    return {"median": statistics.median(values), "lowest": values[0], "highest": values[-1]}


def _ratio(rounds, num, den) -> dict:
    return _spread(r[num] / r[den] for r in rounds)


def _params(shapes):
    key = jax.random.PRNGKey(0)
    return {
        name: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        for i, (name, shape) in enumerate(shapes.items())
    }


def _torch_runners(shapes, momentum):
    """torch.optim.RMSprop (float32, foreach) and bitsandbytes' RMSprop8bit on
    the same shapes; empty where either is missing."""
    try:
        import bitsandbytes as bnb
        import torch
    except ImportError:
        return {}
    runners = {}
    for name, make in (
        (
            "torch float32",
            lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, momentum=momentum),
        ),
        (
            "bitsandbytes 8-bit",
            lambda ps: bnb.optim.RMSprop8bit(ps, lr=1e-3, alpha=0.9, momentum=momentum),
        ),
    ):
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes.values()]
        for p in params:
            p.grad = torch.randn(p.shape) * 0.1
        opt = make(params)

        def run(n, opt=opt):
            with torch.no_grad():
                for _ in range(n):
                    opt.step()

        run(2)
        runners[name] = run
    return runners


def measure(reps: int, tree: str = "resnet50") -> dict:
    """Step times of the variants, with momentum 0.9 and without, on ``tree``."""
    shapes = getattr(trees, tree)()
    params = _params(shapes)
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    out = {"tree": tree, "parameters": trees.count(shapes), "rounds": reps, "rows": []}
    for momentum in (0.0, 0.9):
        runners = {}
        for name, kw in VARIANTS.items():
            opt = rmsprop_jax.rmsprop(1e-3, decay=0.9, momentum=momentum or None, **kw)
            runners[name] = timing.stepper(opt, params, grads)
        runners.update(_torch_runners(shapes, momentum))
        rounds = timing.interleaved_rounds(runners, reps)
        for name in runners:
            torch_side = name.startswith(("torch", "bitsandbytes"))
            base = "torch float32" if torch_side else "float32 state"
            out["rows"].append(
                {
                    "momentum": momentum,
                    "variant": name,
                    "step ms": 1e3 * statistics.median(r[name] for r in rounds),
                    "vs": base,
                    "ratio": _ratio(rounds, name, base),
                }
            )
        runners.clear()
    return out


def _fmt(r: dict) -> str:
    return f"{r['median']:.2f} ({r['lowest']:.2f}-{r['highest']:.2f})"


def report(result: dict) -> list[str]:
    """Markdown lines for the report."""
    lines = [
        "",
        f"8-bit state ({result['tree']}, {result['parameters']:,} parameters, "
        f"{result['rounds']} interleaved rounds; ratio: median (lowest-highest round)):",
        "",
        "| momentum | step | ms | time vs |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['momentum']} | {row['variant']} | {row['step ms']:.2f} | "
            f"{_fmt(row['ratio'])} x {row['vs']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--tree", default="resnet50", choices=["resnet50", "gpt2_small"])
    args = parser.parse_args(argv)
    result = measure(args.reps, args.tree)
    print("\n".join(report(result)))
    return result


if __name__ == "__main__":
    main()
