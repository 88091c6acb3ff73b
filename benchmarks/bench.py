"""Benchmark (`make bench`): step time against optax, torch and the memory-bandwidth floor.

For each parameter tree (ResNet-50-shaped, GPT-2-small-shaped, 2000 small
leaves) and configuration (plain; centered + momentum) it times one jitted
optimizer step (update + optax.apply_updates, parameters and state donated)
of rmsprop_jax and optax.rmsprop, and torch.optim.RMSprop's step on tensors
of the same shapes: eager with foreach=False and foreach=True, and
``torch.compile(opt.step)`` (foreach=False; its first call, the compilation,
is timed on its own, with inductor's caches off). The contestants are timed
in interleaved rounds: each round times every contestant once, in a rotating
order, and the ratios are taken within a round, so that a slow moment of the
shared machine slows both sides of a ratio. Reported: medians, and for the
ratios the lowest and highest round too. A contestant that cannot run here
(torch.compile without a working compiler) is reported missing, with why.

The floor is the bytes the step must move divided by the memory bandwidth,
measured on its own (a large in-place triad, x <- 0.999 x + y) in a quiet
phase before and after the contestants' rounds: median and spread of GB/s,
the floors from the median.

Then: trace, lowering and compile time of the 2000-leaf step for both
configurations (ours and optax's, interleaved cold trials); the 2000-leaf and
ResNet-50 steps on flat parameters (one vector) against per leaf; state bytes
and step time of bfloat16 / stochastically rounded / factored state against
float32 state, with and without momentum, on ResNet-50 and GPT-2; the
factored step against optax.scale_by_factored_rms with the same constant
decay (a ratio with a target, whose rounds fall on both sides of it, is
reported as not resolved by the run); the cost
of stochastic parameter rounding (param_rounding.py); the error of a slow
bfloat16 average against float32; the demo classifier's accuracy with the
factored second moment; and multi-output fusion on XLA:CPU (fusion.py, in
subprocesses).

Writes benchmarks/results/bench.md, bench.json and docs/bench.png.
Usage: python benchmarks/bench.py [--reps 15] [--quick] [--only-light-state]
(the last runs the lighter-state and factored sections alone, into
benchmarks/results/light_state.md and .json)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import rmsprop_jax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import eight_bit_speed  # noqa: E402
import fusion  # noqa: E402
import param_rounding  # noqa: E402
import trees  # noqa: E402
from timing import (  # noqa: E402
    alternating_rounds,
    calibrate,
    interleaved_rounds,
    ratio_cell,
    spread,
    stepper,
    verdict,
)

CONFIGS = {
    "plain": dict(jax=dict(learning_rate=1e-3), torch=dict(lr=1e-3, alpha=0.9), arrays=5),
    "centered+momentum": dict(
        jax=dict(learning_rate=1e-3, centered=True, momentum=0.9),
        torch=dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.9),
        arrays=9,  # read g, p, nu, mu, b; write p, nu, mu, b
    ),
}


def make_params(shapes, seed=0):
    key = jax.random.PRNGKey(seed)
    return {
        name: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        for i, (name, shape) in enumerate(shapes.items())
    }


def torch_stepper(kw, shapes, foreach):
    params = [torch.randn(shape) for shape in shapes.values()]
    for p in params:
        p.grad = torch.randn(p.shape) * 0.1
    opt = torch.optim.RMSprop(params, foreach=foreach, **kw)

    def run(n):
        with torch.no_grad():
            for _ in range(n):
                opt.step()

    run(2)
    return run


def torch_compile_stepper(kw, shapes):
    """``torch.compile(opt.step)`` with foreach=False: ``(run, compile seconds)``,
    the compilation being the first call (inductor's caches off, so that it is
    a cold compile every time). Raises whatever torch.compile raises."""
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.force_disable_caches = True
    torch._dynamo.reset()  # a fresh cache: RMSprop.step is one code object for all
    params = [torch.randn(shape) for shape in shapes.values()]
    for p in params:
        p.grad = torch.randn(p.shape) * 0.1
    opt = torch.optim.RMSprop(params, foreach=False, **kw)
    step = torch.compile(opt.step)

    def run(n):
        with torch.no_grad():
            for _ in range(n):
                step()

    t0 = time.perf_counter()
    run(1)
    compile_s = time.perf_counter() - t0
    run(2)
    return run, compile_s


def bandwidth_stepper(n_floats=64 * 2**20):
    """A large in-place update x <- 0.999 x + y: 3 arrays of traffic."""
    f = jax.jit(lambda x, y: x * 0.999 + y, donate_argnums=0)
    box = {"x": jnp.ones(n_floats), "y": jnp.ones(n_floats)}

    def run(n):
        x = box["x"]
        for _ in range(n):
            x = f(x, box["y"])
        x.block_until_ready()
        box["x"] = x

    run(2)
    return run, 3 * 4 * n_floats


def torch_bandwidth_stepper(n_floats=64 * 2**20):
    """The same triad in PyTorch, one ATen kernel: x <- y + 0.999 x, in place."""
    x, y = torch.ones(n_floats), torch.ones(n_floats)

    def run(n):
        for _ in range(n):
            torch.add(y, x, alpha=0.999, out=x)

    run(2)
    return run, 3 * 4 * n_floats


def bandwidth_phase(runners, reps, target_s=0.3):
    """GB/s of ``reps`` timed batches of each triad (alternating), nothing else running."""
    inner = {name: calibrate(run, target_s) for name, (run, _) in runners.items()}
    out = {name: [] for name in runners}
    for _ in range(reps):
        for name, (run, nbytes) in runners.items():
            t0 = time.perf_counter()
            run(inner[name])
            out[name].append(nbytes * inner[name] / (time.perf_counter() - t0) / 1e9)
    return out


def medians(rounds: list[dict]) -> dict:
    return {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}


def ratio(rounds: list[dict], num, den) -> dict:
    """The per-round ratio num / den (``num`` or ``den`` may be a function of
    the round): median, lowest and highest round."""
    get = lambda r, k: k(r) if callable(k) else r[k]
    return spread(get(r, num) / get(r, den) for r in rounds)


def fmt(r: dict | None, digits: int = 2) -> str:
    """A ratio as "median (lowest-highest)"."""
    if r is None:
        return "n/a"
    return f"{r['median']:.{digits}f} ({r['lowest']:.{digits}f}-{r['highest']:.{digits}f})"


def compile_times(make_opts: dict, params, trials=3) -> dict:
    """Trace, lower and compile seconds of a fresh step per optimizer, the
    optimizers interleaved over ``trials`` (the order rotating). JAX's caches
    are cleared before each, so every trace is cold: rmsprop_jax traces each
    distinct leaf once (a nested jit), and a warm cache would hide that cost.
    Medians, the per-trial ratios to the last optimizer (with their spread)
    and the size of each program per leaf."""
    out = {name: {"trace": [], "lower": [], "compile": []} for name in make_opts}
    size = {}
    names = list(make_opts)
    n_leaves = len(jax.tree.leaves(params))
    for trial in range(trials):
        for name in names[trial % len(names) :] + names[: trial % len(names)]:
            opt = make_opts[name]()

            def step(params, state, grads, opt=opt):
                updates, state = opt.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            state = opt.init(params)
            jax.clear_caches()
            t0 = time.perf_counter()
            traced = jax.jit(step).trace(params, state, params)
            t1 = time.perf_counter()
            lowered = traced.lower()
            t2 = time.perf_counter()
            compiled = lowered.compile()
            t3 = time.perf_counter()
            for key, dt in (("trace", t1 - t0), ("lower", t2 - t1), ("compile", t3 - t2)):
                out[name][key].append(dt)
            if name not in size:
                size[name] = {
                    "ops per leaf": _count_ops(lowered.as_text()) / n_leaves,
                    "optimized per leaf": _count_ops(compiled.as_text()) / n_leaves,
                }
    totals = {name: [a + b + c for a, b, c in zip(*d.values())] for name, d in out.items()}
    base = names[-1]
    return {
        name: {
            **{k: statistics.median(v) for k, v in d.items()},
            "total": statistics.median(totals[name]),
            "ratio": spread([a / b for a, b in zip(totals[name], totals[base])]),
            **size[name],
        }
        for name, d in out.items()
    }


def _count_ops(text: str) -> int:
    """Instructions in a StableHLO or HLO text (lines that define a value)."""
    return sum(1 for line in text.splitlines() if " = " in line and not line.startswith("#"))


def slow_average_error(nu_dtype, stochastic, steps=3000):
    opt = rmsprop_jax.scale_by_rms(decay=0.999, nu_dtype=nu_dtype, stochastic_rounding=stochastic)
    g = jnp.ones(4096)

    def body(state, _):
        return opt.update(g, state)[1], None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(opt.init(g))
    exact = 1 - 0.999**steps
    return float(np.abs(np.asarray(state.nu, np.float64) - exact).mean())


def state_bytes(state):
    return sum(x.nbytes for x in jax.tree.leaves((state.nu, state.mu, state.trace)))


TORCH_COMPILE = "torch.compile"


def step_times(tree_list, reps, results, compile_max_leaves):
    """The main table: every contestant on every tree and configuration."""
    for tree_name, shapes in tree_list.items():
        n = trees.count(shapes)
        params = make_params(shapes)
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        for cfg_name, cfg in CONFIGS.items():
            runners = {
                "rmsprop_jax": stepper(rmsprop_jax.rmsprop(**cfg["jax"]), params, grads),
                "optax": stepper(optax.rmsprop(**cfg["jax"]), params, grads),
                "torch foreach=False": torch_stepper(cfg["torch"], shapes, foreach=False),
                "torch foreach=True": torch_stepper(cfg["torch"], shapes, foreach=True),
            }
            row = {"tree": tree_name, "params": n, "leaves": len(shapes), "config": cfg_name}
            if len(shapes) > compile_max_leaves:
                row["torch.compile missing"] = (
                    f"not attempted: {len(shapes)} leaves > --torch-compile-max-leaves "
                    f"{compile_max_leaves} (a cold compile of a 2000-tensor step ran for more "
                    "than 9 minutes without finishing on the development machine)"
                )
            else:
                try:
                    runners[TORCH_COMPILE], row["torch.compile compile s"] = torch_compile_stepper(
                        cfg["torch"], shapes
                    )
                except Exception as e:  # a missing compiler, an unsupported platform
                    row["torch.compile missing"] = f"{type(e).__name__}: {str(e)[:300]}"
            rounds = interleaved_rounds(runners, reps)
            med = medians(rounds)
            row.update({f"{k} ms": 1e3 * v for k, v in med.items()})
            row["bytes"] = cfg["arrays"] * 4 * n
            row["ours/optax"] = ratio(rounds, "rmsprop_jax", "optax")
            row["ours/torch.compile"] = (
                ratio(rounds, "rmsprop_jax", TORCH_COMPILE) if TORCH_COMPILE in med else None
            )
            row["best torch eager/ours"] = ratio(
                rounds,
                lambda r: min(r["torch foreach=False"], r["torch foreach=True"]),
                "rmsprop_jax",
            )
            results["rows"].append(row)
            tc = (
                f"{row[TORCH_COMPILE + ' ms']:9.3f} "
                f"(compile {row['torch.compile compile s']:.1f} s)"
                if TORCH_COMPILE in med
                else "missing"
            )
            print(
                f"{tree_name:<18}{cfg_name:<19} ours {row['rmsprop_jax ms']:9.3f} ms  "
                f"optax {row['optax ms']:9.3f}  torch {row['torch foreach=False ms']:9.3f} / "
                f"{row['torch foreach=True ms']:9.3f}  torch.compile {tc}  | ours/optax "
                f"{fmt(row['ours/optax'])}  ours/torch.compile {fmt(row['ours/torch.compile'])}",
                flush=True,
            )
            del runners


def flat_params(reps, results):
    """Flat parameters (one vector) against per leaf, rmsprop_jax, both configurations."""
    from jax.flatten_util import ravel_pytree

    out = []
    for tree_name, shapes in {
        "2000 small leaves": trees.small_leaves(),
        "ResNet-50": trees.resnet50(),
    }.items():
        params = make_params(shapes)
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        flat, flat_grads = ravel_pytree(params)[0], ravel_pytree(grads)[0]
        for cfg_name, cfg in CONFIGS.items():
            runners = {
                "per leaf": stepper(rmsprop_jax.rmsprop(**cfg["jax"]), params, grads),
                "flat": stepper(rmsprop_jax.rmsprop(**cfg["jax"]), flat, flat_grads),
            }
            rounds = interleaved_rounds(runners, reps)
            med = medians(rounds)
            row = {
                "tree": tree_name,
                "config": cfg_name,
                "per leaf ms": 1e3 * med["per leaf"],
                "flat ms": 1e3 * med["flat"],
                "speed-up": ratio(rounds, "per leaf", "flat"),
            }
            out.append(row)
            print(
                f"flat parameters, {tree_name}, {cfg_name}: per leaf {row['per leaf ms']:.3f} ms, "
                f"flat {row['flat ms']:.3f} ms, speed-up {fmt(row['speed-up'], 1)}",
                flush=True,
            )
            del runners
    results["flat_params"] = out


# The targets of the lighter-state ratios (time against float32 state, or against
# optax's factored step): a ratio whose rounds fall on both sides of its target
# is reported as not resolved by the run.
LIGHT_TARGETS = {
    "bfloat16 state": 1.0,
    "bfloat16 + stochastic rounding": 1.1,
}
FACTORED_TARGET = 1.0


def light_state(reps, results, tree_list):
    """Lighter state against float32 state, with and without momentum: per tree,
    every variant in the same rounds, alternating step by step
    (``timing.alternating_rounds``), ratios per round."""
    variants = {
        "float32 state": dict(),
        "bfloat16 state": dict(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16),
        "bfloat16 + stochastic rounding": dict(
            nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16, stochastic_rounding=True
        ),
        "factored": dict(factored=True),
        "factored + bfloat16 momentum": dict(factored=True, mu_dtype=jnp.bfloat16),
    }
    light = []
    for tree_name, shapes in tree_list.items():
        params = make_params(shapes)
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        n = trees.count(shapes)
        for momentum in (0.9, None):
            runners, rows = {}, []
            for name, kw in variants.items():
                if momentum is None and "momentum" in name:
                    continue
                opt = rmsprop_jax.rmsprop(1e-3, momentum=momentum, **kw)
                runners[name] = stepper(opt, params, grads)
                rows.append(
                    {
                        "tree": tree_name,
                        "momentum": momentum,
                        "variant": name,
                        "state bytes / param": state_bytes(opt.init(params)) / n,
                    }
                )
            load = _load()
            rounds = alternating_rounds(runners, reps)
            med = medians(rounds)
            for row in rows:
                row["load"] = load
                row["step ms"] = 1e3 * med[row["variant"]]
                row["time vs float32"] = ratio(rounds, row["variant"], "float32 state")
                target = LIGHT_TARGETS.get(row["variant"])
                if target is not None:
                    row["target"] = target
                    row["verdict"] = verdict(row["time vs float32"], target)
                print(
                    f"{tree_name:<12} {'momentum' if momentum else 'plain':<9}"
                    f"{row['variant']:<31} {row['state bytes / param']:.3f} B/param, step "
                    f"{row['step ms']:7.2f} ms ({fmt(row['time vs float32'])}x)"
                    + (f"  <= {target}: {row['verdict']}" if target is not None else ""),
                    flush=True,
                )
            light.extend(rows)
            del runners
    results["light_state"] = light


def factored_vs_optax(reps, results, tree_list):
    """``scale_by_rms(factored=True)`` against ``optax.scale_by_factored_rms``
    with the same constant decay (0.9: optax's decay schedule replaced by a
    constant through ``decay_rate_fn``), each followed by
    ``optax.apply_updates`` in a donated step, on the same shapes, interleaved.
    Each keeps its own eps (ours 1e-8 added to the estimate, optax's 1e-30 added
    to the squares) and its own rule for small leaves (both factor the two
    largest axes of leaves whose axes reach 128). The two alternate step by
    step (``timing.alternating_rounds``)."""
    out = []
    for tree_name, shapes in tree_list.items():
        params = make_params(shapes)
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        runners = {
            "rmsprop_jax": stepper(
                rmsprop_jax.scale_by_rms(decay=0.9, factored=True), params, grads
            ),
            "optax": stepper(
                optax.scale_by_factored_rms(decay_rate=0.9, decay_rate_fn=lambda t, d: d),
                params,
                grads,
            ),
        }
        load = _load()
        rounds = alternating_rounds(runners, reps)
        med = medians(rounds)
        row = {
            "tree": tree_name,
            "load": load,
            "rmsprop_jax ms": 1e3 * med["rmsprop_jax"],
            "optax ms": 1e3 * med["optax"],
            "ours/optax": ratio(rounds, "rmsprop_jax", "optax"),
            "target": FACTORED_TARGET,
        }
        row["verdict"] = verdict(row["ours/optax"], FACTORED_TARGET)
        out.append(row)
        print(
            f"factored, {tree_name}: ours {row['rmsprop_jax ms']:.2f} ms, optax "
            f"{row['optax ms']:.2f} ms, ours/optax {fmt(row['ours/optax'])}  "
            f"<= {FACTORED_TARGET}: {row['verdict']}",
            flush=True,
        )
        del runners
    results["factored_vs_optax"] = out


def light_state_report(results) -> list[str]:
    """The lighter-state and factored tables, each ratio with its verdict."""
    lines = [
        "Lighter state against float32 state (rmsprop, lr 1e-3; per-round ratios: median "
        "(lowest-highest round); a ratio with a target says whether every round met it):",
        "",
        "| tree | momentum | state | bytes / param | step ms | time vs float32 | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["light_state"]:
        target = f"<= {r['target']}: {r['verdict']}" if "target" in r else "-"
        lines.append(
            f"| {r['tree']} | {r['momentum'] or 'none'} | {r['variant']} | "
            f"{r['state bytes / param']:.3f} | {r['step ms']:.2f} | "
            f"{ratio_cell(r['time vs float32'], r.get('target'))} | {target} |"
        )
    lines += [
        "",
        "Factored second moment: scale_by_rms(decay=0.9, factored=True) against "
        "optax.scale_by_factored_rms(decay_rate=0.9, decay_rate_fn=constant), each with "
        "optax.apply_updates, donated:",
        "",
        "| tree | rmsprop_jax ms | optax ms | ours/optax | target |",
        "|---|---|---|---|---|",
    ]
    for r in results["factored_vs_optax"]:
        lines.append(
            f"| {r['tree']} | {r['rmsprop_jax ms']:.2f} | {r['optax ms']:.2f} | "
            f"{ratio_cell(r['ours/optax'], r['target'])} | <= {r['target']}: {r['verdict']} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--reps", type=int, default=15, help="interleaved rounds (each times every contestant once)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip GPT-2; one compile trial; short fusion and parameter-rounding runs",
    )
    parser.add_argument(
        "--out", default=str(HERE / "results"), help="folder for bench.md and .json"
    )
    parser.add_argument(
        "--torch-compile-max-leaves",
        type=int,
        default=500,
        help="compile torch's step only for trees with at most this many tensors",
    )
    parser.add_argument("--no-fusion", action="store_true", help="skip the fusion subprocesses")
    parser.add_argument(
        "--only-light-state",
        action="store_true",
        help="only the lighter-state and factored-vs-optax sections (writes light_state.md)",
    )
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    large = {"ResNet-50": trees.resnet50()}
    if not args.quick:
        large["GPT-2 small"] = trees.gpt2_small()
    if args.only_light_state:
        results = {"reps": args.reps, "quick": args.quick, "load before": _load()}
        light_state(args.reps, results, large)
        factored_vs_optax(args.reps, results, large)
        results["load after"] = _load()
        lines = [
            f"{results['reps']} interleaved rounds; {results['load before']} at the start, "
            f"{results['load after']} at the end.",
            "",
            *light_state_report(results),
        ]
        (out / "light_state.md").write_text("\n".join(lines) + "\n")
        (out / "light_state.json").write_text(json.dumps(results, indent=2))
        print("\n".join(lines))
        return results

    tree_list = {"ResNet-50": trees.resnet50(), "2000 small leaves": trees.small_leaves()}
    if not args.quick:
        tree_list["GPT-2 small"] = trees.gpt2_small()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads (torch {torch.__version__}), "
        f"jax {jax.__version__} on {jax.devices()[0].platform}",
        "reps": args.reps,
        "quick": args.quick,
        "load before": _load(),
        "rows": [],
    }

    # The floor: the bandwidth alone, before and after the contestants. XLA's
    # triad sets the floor (as the jax steps are compiled by XLA); PyTorch's is
    # reported beside it.
    triads = {"xla": bandwidth_stepper(), "torch": torch_bandwidth_stepper()}
    bw_reps = max(3, min(args.reps, 9))
    before = bandwidth_phase(triads, bw_reps)
    print(
        f"bandwidth before: xla {fmt(spread(before['xla']))} GB/s, torch "
        f"{fmt(spread(before['torch']))} GB/s",
        flush=True,
    )
    step_times(tree_list, args.reps, results, args.torch_compile_max_leaves)
    after = bandwidth_phase(triads, bw_reps)
    print(
        f"bandwidth after: xla {fmt(spread(after['xla']))} GB/s, torch "
        f"{fmt(spread(after['torch']))} GB/s",
        flush=True,
    )
    del triads
    results["bandwidth GB/s"] = {
        name: {
            **spread(before[name] + after[name]),
            "before": spread(before[name]),
            "after": spread(after[name]),
            "samples": len(before[name] + after[name]),
        }
        for name in ("xla", "torch")
    }
    bandwidth = results["bandwidth GB/s"]["xla"]["median"]
    for row in results["rows"]:
        row["floor ms"] = 1e3 * row["bytes"] / (bandwidth * 1e9)
        row["ours/floor"] = row["rmsprop_jax ms"] / row["floor ms"]

    small = make_params(trees.small_leaves())
    results["compile"] = {}
    for cfg_name, cfg in CONFIGS.items():
        kw = cfg["jax"]
        c = compile_times(
            {
                "rmsprop_jax": lambda kw=kw: rmsprop_jax.rmsprop(**kw),
                "optax": lambda kw=kw: optax.rmsprop(**kw),
            },
            small,
            trials=1 if args.quick else 7,
        )
        results["compile"][cfg_name] = c
        print(
            f"trace+lower+compile, 2000 leaves, {cfg_name}: ours {c['rmsprop_jax']['total']:.2f} s "
            f"(trace {c['rmsprop_jax']['trace']:.2f}), optax {c['optax']['total']:.2f} s "
            f"(trace {c['optax']['trace']:.2f}), ours/optax {fmt(c['rmsprop_jax']['ratio'])}",
            flush=True,
        )
    del small

    flat_params(args.reps, results)
    light_state(args.reps, results, large)
    factored_vs_optax(args.reps, results, large)
    results["eight_bit"] = eight_bit_speed.measure(args.reps, "resnet50")
    print("\n".join(eight_bit_speed.report(results["eight_bit"])), flush=True)
    results["param_rounding"] = param_rounding.measure(args.reps, args.quick)
    for label, r in results["param_rounding"]["ratios"].items():
        print(f"stochastic parameter rounding, {label}: {fmt(r)}x", flush=True)
    results["slow_average_error"] = {
        "float32": slow_average_error(None, False),
        "bfloat16 nearest": slow_average_error(jnp.bfloat16, False),
        "bfloat16 stochastic": slow_average_error(jnp.bfloat16, True),
    }
    print("mean |nu - exact| after 3000 steps of decay 0.999:", results["slow_average_error"])

    # Factored second moment on the demo's classifier.
    sys.path.insert(0, str(HERE.parent / "examples"))
    import demo

    data = demo.load_data()
    acc = {}
    for name, kw in {
        "full": {},
        "factored": dict(factored=True, min_dim_size_to_factor=32),
    }.items():
        r = demo.train_classifier(f"RMSprop {name}", rmsprop_jax.rmsprop(3e-3, **kw), data, 1500)
        acc[name] = r["test_accuracy"]
    results["factored_demo_accuracy"] = acc
    print(
        f"digits classifier test accuracy: full {acc['full']:.4f}, factored {acc['factored']:.4f}"
    )

    if not args.no_fusion:
        try:
            results["fusion"] = fusion.measure(args.reps, args.quick)
        except Exception as e:  # report, do not lose the rest of the run
            results["fusion"] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
    results["load after"] = _load()

    (out / "bench.json").write_text(json.dumps(results, indent=2))  # before the report
    write_report(results, out)
    plot(results, HERE.parent / "docs" / "bench.png")
    return results


def _load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def write_report(results, out):
    lines = [
        f"Machine: {results['machine']}; {results['reps']} interleaved rounds"
        + (" (--quick)" if results["quick"] else "")
        + f"; {results['load before']} at the start, {results['load after']} at the end.",
        "",
        "Median step time (ms); ratios are per round: median (lowest-highest round).",
        "",
        "| tree | params | config | rmsprop_jax | optax | torch foreach=False | "
        "torch foreach=True | torch.compile | floor | ours/optax | ours/torch.compile | "
        "best torch eager/ours | ours/floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        tc = f"{r[TORCH_COMPILE + ' ms']:.2f}" if TORCH_COMPILE + " ms" in r else "missing"
        lines.append(
            f"| {r['tree']} | {r['params']:,} | {r['config']} | {r['rmsprop_jax ms']:.2f} | "
            f"{r['optax ms']:.2f} | {r['torch foreach=False ms']:.2f} | "
            f"{r['torch foreach=True ms']:.2f} | {tc} | {r['floor ms']:.2f} | "
            f"{fmt(r['ours/optax'])} | {fmt(r['ours/torch.compile'])} | "
            f"{fmt(r['best torch eager/ours'])} | {r['ours/floor']:.2f} |"
        )
    lines += ["", "torch.compile (foreach=False), first call (cold compile, inductor caches off):"]
    for r in results["rows"]:
        what = (
            f"{r['torch.compile compile s']:.1f} s"
            if "torch.compile compile s" in r
            else f"missing: {r['torch.compile missing']}"
        )
        lines.append(f"- {r['tree']}, {r['config']}: {what}")
    bws = results["bandwidth GB/s"]
    lines += [""]
    for name, label in (("xla", "XLA (sets the floor)"), ("torch", "PyTorch (for comparison)")):
        bw = bws[name]
        lines.append(
            f"Bandwidth, triad x <- 0.999 x + y measured alone, {label}: median "
            f"{bw['median']:.2f} GB/s, {bw['lowest']:.2f}-{bw['highest']:.2f} over "
            f"{bw['samples']} samples (before the contestants {fmt(bw['before'])}, after "
            f"{fmt(bw['after'])})."
        )
    lines += [
        "The floors are the bytes each step must move over XLA's median bandwidth.",
        "",
        "Trace + lower + compile of the 2000-leaf step (s, medians of interleaved cold trials;",
        "ours/optax per trial, median and lowest-highest; program size per leaf):",
        "",
        "| config | step | trace | lower | compile | total | ours/optax | StableHLO ops "
        "| optimized HLO |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg_name, c in results["compile"].items():
        for name in ("rmsprop_jax", "optax"):
            t = c[name]
            lines.append(
                f"| {cfg_name} | {name} | {t['trace']:.2f} | {t['lower']:.2f} | "
                f"{t['compile']:.2f} | {t['total']:.2f} | "
                + (f"{fmt(t['ratio'])} | " if name == "rmsprop_jax" else " | ")
                + f"{t['ops per leaf']:.1f} | {t['optimized per leaf']:.1f} |"
            )
    lines += [
        "",
        "Flat parameters (one vector, examples/flat_params.py) against per leaf, rmsprop_jax:",
        "",
        "| tree | config | per leaf ms | flat ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in results["flat_params"]:
        lines.append(
            f"| {r['tree']} | {r['config']} | {r['per leaf ms']:.3f} | {r['flat ms']:.3f} | "
            f"{fmt(r['speed-up'], 1)} |"
        )
    lines += ["", *light_state_report(results)]
    lines += eight_bit_speed.report(results["eight_bit"])
    pr = results["param_rounding"]
    lines += [
        "",
        f"Stochastic parameter rounding ({pr['tree']}, bfloat16 parameters, "
        f"{pr['rounds']} rounds):",
        "",
        "| step | ms |",
        "|---|---|",
        *[f"| {name} | {ms:.2f} |" for name, ms in pr["step ms"].items()],
        "",
        *[f"- {label}: {fmt(r)}x the step without" for label, r in pr["ratios"].items()],
    ]
    e = results["slow_average_error"]
    a = results["factored_demo_accuracy"]
    lines += [
        "",
        "Mean |nu - exact| after 3000 steps of decay 0.999: "
        + ", ".join(f"{k} {v:.4f}" for k, v in e.items())
        + ".",
        f"Digits classifier test accuracy: full {a['full']:.4f}, factored {a['factored']:.4f}.",
    ]
    if "fusion" in results:
        f = results["fusion"]
        lines += [""] + (fusion.report(f) if "error" not in f else [f"Fusion: {f['error']}"])
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, cfg in zip(axes, CONFIGS):
        rows = sorted((r for r in results["rows"] if r["config"] == cfg), key=lambda r: r["params"])
        for key, label in [
            ("rmsprop_jax ms", "rmsprop_jax"),
            ("optax ms", "optax.rmsprop"),
            ("torch foreach=False ms", "torch foreach=False"),
            ("torch foreach=True ms", "torch foreach=True"),
            ("torch.compile ms", "torch.compile"),
            ("floor ms", "bandwidth floor"),
        ]:
            pts = [(r["params"], r[key]) for r in rows if key in r]  # torch.compile may be missing
            if pts:
                ax.plot(*zip(*pts), "o-" if "floor" not in key else "k--", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(f"RMSprop step, {cfg}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("median step time (ms)")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
