"""Multi-output fusion on XLA:CPU: can the step become one loop per leaf?

An RMSprop step is bound by memory traffic, and the fewest bytes it can move
are one read of each input and one write of each output. XLA's CPU backend
compiles today's step (rmsprop_jax's and optax's alike) into one loop per
output: the new second moment is written by one loop and read back by the
loop that writes the new parameters. This script asks whether XLA can be
brought to write all outputs of a leaf from one loop, and at what price.

XLA:CPU has a multi-output fusion pass, off by default, switched on by

  XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion

(read when jax initialises its CPU backend, hence one subprocess per setting).
The pass fuses *siblings*, loops that read the same inputs, and not a
producer with its consumer. So besides today's programs, it times a *sibling*
formulation, ``sibling_rmsprop`` below, an Optax gradient transformation
whose update and new state are computed side by side from the same inputs
(g, nu, p; and mu, the momentum buffer when centered with momentum) rather
than the update from the new state. XLA's common-subexpression elimination
would merge the two computations back into producer and consumer, so the
update is written on the negated inputs, which gives the same bits (negation
is exact) through different instructions.

For each tree (ResNet-50; GPT-2 small unless --quick) and configuration
(plain; centered + momentum), in subprocesses with and without the flag, it
compiles the jitted, donated step (``update`` + ``optax.apply_updates``) of
rmsprop_jax.rmsprop, optax.rmsprop and sibling_rmsprop, counts the fusions,
multi-output fusions and copies in the optimized HLO of the entry
computation, and times the steps in interleaved rounds (ratios to optax taken
within a round). The processes with and without the flag alternate
(--procs of each), and the times of one contestant are pooled over its
processes.

Usage: python benchmarks/fusion.py [--reps 7] [--procs 2] [--quick] [--json FILE]
From bench.py: ``fusion.measure(reps, quick)`` returns the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Any, NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import timing  # noqa: E402  (imports jax lazily: children set XLA_FLAGS first)

FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
CONFIGS = {
    "plain": dict(learning_rate=1e-3),
    "centered+momentum": dict(learning_rate=1e-3, centered=True, momentum=0.9),
}
CONTESTANTS = ("rmsprop_jax", "optax", "sibling")


# --------------------------------------------------------------------------
# The sibling formulation (imports jax lazily: the parent process must not
# initialise a backend before its children set XLA_FLAGS).


class SiblingState(NamedTuple):
    nu: Any
    mu: Any  # None unless centered
    trace: Any  # None without momentum


def sibling_rmsprop(
    learning_rate: float,
    decay: float = 0.9,
    eps: float = 1e-8,
    centered: bool = False,
    momentum: float | None = None,
):
    """RMSprop whose outputs are siblings: an Optax transformation computing
    the update and the new state of each leaf from the same inputs.

    The mathematics of ``rmsprop_jax.rmsprop(learning_rate, decay, eps,
    centered=centered, momentum=momentum)`` (eps inside the square root, the
    learning rate in the momentum buffer), without its options and without its
    bounds on non-finite values. Each output is one expression of the step's
    inputs; the update's is written on the negated inputs so that XLA does not
    share instructions between the outputs. Only worth it under
    ``xla_cpu_use_multi_output_fusion``: without the flag XLA copies the
    donated state that two loops read (see docs/performance.md).
    """
    import jax
    import jax.numpy as jnp
    import optax

    d, m = decay, (momentum or 0.0)
    c = 1.0 - decay  # in float64, as optax and rmsprop_jax form it

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return SiblingState(zeros(), zeros() if centered else None, zeros() if m else None)

    def leaf(g, nu, mu, b):
        # The new state, as rmsprop_jax forms it.
        new_nu = d * nu + c * (g * g)
        new_mu = d * mu + c * g if centered else None
        # The update from -g, -nu, -mu, -b: the same bits (negation is exact)
        # through instructions that no other output shares.
        ng = -g
        v = -(d * -nu) - c * (ng * g)
        if centered:
            nmean = d * -mu + c * ng
            v = v - nmean * nmean
        neg_step = learning_rate * (ng * jax.lax.rsqrt(v + eps))  # -lr g / sqrt(v + eps)
        if not m:
            return neg_step, new_nu, new_mu, None
        update = m * -b + neg_step  # minus the new buffer
        # The new buffer from |nu|, 2 g and 2 mu: the same bits again (nu >= 0;
        # scaling by a power of 2 is exact), through a third set of instructions.
        g2 = 2.0 * g
        w = d * jnp.abs(nu) + (0.25 * c) * (g2 * g2)
        if centered:
            mean2 = d * (2.0 * mu) + c * g2
            w = w - 0.25 * (mean2 * mean2)
        new_b = m * b + learning_rate * (g * jax.lax.rsqrt(w + eps))
        return update, new_nu, new_mu, new_b

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        nus = treedef.flatten_up_to(state.nu)
        mus = treedef.flatten_up_to(state.mu) if centered else [None] * len(leaves)
        bs = treedef.flatten_up_to(state.trace) if m else [None] * len(leaves)
        out = [leaf(*args) for args in zip(leaves, nus, mus, bs)]
        unflat = lambda i: treedef.unflatten([o[i] for o in out])
        return unflat(0), SiblingState(
            unflat(1), unflat(2) if centered else None, unflat(3) if m else None
        )

    return optax.GradientTransformation(init, update_fn)


# --------------------------------------------------------------------------
# One process: one setting of the flag.


def hlo_counts(compiled_text: str) -> dict:
    """Fusions, multi-output fusions and copies in the entry computation."""
    entry = compiled_text[compiled_text.index("\nENTRY") :]
    lines = [line for line in entry.splitlines() if " = " in line]
    fusions = [line for line in lines if " fusion(" in line]
    return {
        "fusions": len(fusions),
        "multi-output fusions": sum(1 for line in fusions if "= (" in line),
        "copies": sum(1 for line in lines if " copy(" in line),
    }


def agreement(steps: int = 50) -> dict:
    """The largest difference of sibling_rmsprop's parameters, and for scale
    optax.rmsprop's, from rmsprop_jax's over ``steps`` steps on a 3-leaf tree,
    relative to the largest distance moved, per configuration."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import rmsprop_jax

    rng = np.random.default_rng(0)
    start = {
        k: jnp.asarray(rng.standard_normal(s), jnp.float32)
        for k, s in {"w": (64, 32), "b": (32,), "s": (7, 3, 5)}.items()
    }
    grads = [
        jax.tree.map(
            lambda x, t=t: jnp.asarray(
                10.0 ** rng.uniform(-2, 1) * rng.standard_normal(x.shape), jnp.float32
            ),
            start,
        )
        for t in range(steps)
    ]
    out = {}
    for cfg_name, kw in CONFIGS.items():
        runs = []
        for opt in (rmsprop_jax.rmsprop(**kw), sibling_rmsprop(**kw), optax.rmsprop(**kw)):
            update = jax.jit(opt.update)
            params, state, traj = start, opt.init(start), []
            for g in grads:
                u, state = update(g, state, params)
                params = optax.apply_updates(params, u)
                traj.append(jnp.concatenate([x.ravel() for x in jax.tree.leaves(params)]))
            runs.append(jnp.stack(traj))
        first = jnp.concatenate([x.ravel() for x in jax.tree.leaves(start)])
        moved = float(jnp.max(jnp.abs(runs[0] - first)))
        out[cfg_name] = {
            name: float(jnp.max(jnp.abs(run - runs[0]))) / moved
            for name, run in zip(("sibling", "optax"), runs[1:])
        }
    return out


def _worker(tree_names: list[str], reps: int, target_s: float) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import rmsprop_jax

    sys.path.insert(0, str(HERE))
    import trees

    makers = {
        "rmsprop_jax": lambda kw: rmsprop_jax.rmsprop(**kw),
        "optax": lambda kw: optax.rmsprop(**kw),
        "sibling": lambda kw: sibling_rmsprop(**kw),
    }
    result: dict = {
        "flags": os.environ.get("XLA_FLAGS", ""),
        "sibling vs rmsprop_jax": agreement(),
        "cells": [],
    }
    for tree_name in tree_names:
        shapes = getattr(trees, {"ResNet-50": "resnet50", "GPT-2 small": "gpt2_small"}[tree_name])()
        key = jax.random.PRNGKey(0)
        params = {
            name: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
            for i, (name, shape) in enumerate(shapes.items())
        }
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        for cfg_name, kw in CONFIGS.items():
            runners, counts = {}, {}
            for name in CONTESTANTS:
                opt = makers[name](kw)
                step = timing.donated_step(opt)
                compiled = step.lower(params, opt.init(params), grads).compile()
                counts[name] = hlo_counts(compiled.as_text())
                runners[name] = timing.stepper(opt, params, grads, step)
            rounds = timing.interleaved_rounds(runners, reps, target_s)
            result["cells"].append(
                {"tree": tree_name, "config": cfg_name, "counts": counts, "rounds": rounds}
            )
            del runners
    return result


def _run_process(flag: bool, tree_names: list[str], reps: int, target_s: float) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if f != FLAG]
    if flag:
        flags.append(FLAG)
    env["XLA_FLAGS"] = " ".join(flags)
    args = json.dumps({"trees": tree_names, "reps": reps, "target_s": target_s})
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fusion worker (flag={flag}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(reps: int = 7, quick: bool = False, procs: int = 2) -> dict:
    """Fusion counts and step times with and without the multi-output fusion
    flag. ``quick``: ResNet-50 only, one process of each, at most 3 rounds."""
    tree_names = ["ResNet-50"] if quick else ["ResNet-50", "GPT-2 small"]
    if quick:
        reps, procs = min(reps, 3), 1
    target_s = 0.05 if quick else 0.2
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(procs):
        for flag in (False, True):
            runs[flag].append(_run_process(flag, tree_names, reps, target_s))
    out: dict = {
        "flag": FLAG,
        "processes of each": procs,
        "rounds per process": reps,
        "sibling vs rmsprop_jax": {
            "default": runs[False][0]["sibling vs rmsprop_jax"],
            "flag": runs[True][0]["sibling vs rmsprop_jax"],
        },
        "cells": [],
    }
    for i, cell in enumerate(runs[False][0]["cells"]):
        row: dict = {"tree": cell["tree"], "config": cell["config"]}
        for flag, label in ((False, "default"), (True, "flag")):
            rounds = [r for run in runs[flag] for r in run["cells"][i]["rounds"]]
            row[label] = {
                "counts": runs[flag][0]["cells"][i]["counts"],
                "step ms": {n: 1e3 * statistics.median(r[n] for r in rounds) for n in CONTESTANTS},
                "vs optax": {
                    n: timing.spread(r[n] / r["optax"] for r in rounds) for n in CONTESTANTS
                },
            }
        out["cells"].append(row)
    return out


def report(result: dict) -> list[str]:
    """Markdown lines: one row per tree, configuration, setting and contestant."""
    lines = [
        f"Multi-output fusion (`XLA_FLAGS={result['flag']}`), "
        f"{result['processes of each']} process(es) of each setting x "
        f"{result['rounds per process']} interleaved rounds:",
        "",
        "| tree | config | XLA flag | step | fusions | multi-output | copies | step ms | "
        "vs optax (rounds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tail = [
        "",
        "Largest parameter difference from rmsprop_jax over 50 steps, relative to the "
        "distance moved (float32 rounding; optax's for scale): "
        + "; ".join(
            f"flag {label}, {cfg}: sibling {v['sibling']:.1e}, optax {v['optax']:.1e}"
            for key, label in (("default", "off"), ("flag", "on"))
            for cfg, v in result["sibling vs rmsprop_jax"][key].items()
        )
        + ".",
    ]
    for row in result["cells"]:
        for label in ("default", "flag"):
            cell = row[label]
            for n in CONTESTANTS:
                c, r = cell["counts"][n], cell["vs optax"][n]
                lines.append(
                    f"| {row['tree']} | {row['config']} | {'on' if label == 'flag' else 'off'} "
                    f"| {n} | {c['fusions']} | {c['multi-output fusions']} | {c['copies']} | "
                    f"{cell['step ms'][n]:.2f} | {r['median']:.2f} "
                    f"({r['lowest']:.2f}-{r['highest']:.2f}) |"
                )
    return lines + tail


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=7,
        help="interleaved rounds per process (each times every step once)",
    )
    parser.add_argument(
        "--procs", type=int, default=2, help="processes of each setting, alternating"
    )
    parser.add_argument(
        "--quick", action="store_true", help="ResNet-50 only, one process of each, at most 3 rounds"
    )
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        w = json.loads(args.worker)
        print(json.dumps(_worker(w["trees"], w["reps"], w["target_s"])))
        return {}
    result = measure(args.reps, args.quick, args.procs)
    print("\n".join(report(result)))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
