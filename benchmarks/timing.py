"""Timing helpers shared by the benchmarks: a donated optimizer step to call
repeatedly, and interleaved rounds of several of them.

jax is imported inside the functions, so that fusion.py's parent process can
import this module before its children set XLA_FLAGS.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def donated_step(opt: Any) -> Callable:
    """``update`` then ``optax.apply_updates``, jitted, parameters and state donated."""
    import jax
    import optax

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def stepper(opt: Any, params: Any, grads: Any, step: Callable | None = None) -> Callable:
    """``run(n)``: ``n`` steps of ``opt`` from (a copy of) ``params``, carrying the
    parameters and state from call to call; compiled and warmed up."""
    import jax
    import jax.numpy as jnp

    step = donated_step(opt) if step is None else step
    box = {"params": jax.tree.map(jnp.copy, params), "state": opt.init(params)}

    def run(n: int) -> None:
        p, s = box["params"], box["state"]
        for _ in range(n):
            p, s = step(p, s, grads)
        jax.block_until_ready((p, s))
        box["params"], box["state"] = p, s

    run(2)
    return run


def calibrate(run: Callable, target_s: float = 0.05) -> int:
    """How many steps take about ``target_s`` seconds."""
    t0 = time.perf_counter()
    run(1)
    return max(1, int(target_s / max(time.perf_counter() - t0, 1e-6)))


def interleaved_rounds(runners: dict, reps: int, target_s: float = 0.05) -> list[dict]:
    """Seconds per step of each runner in ``reps`` rounds; each round times
    every runner once, in a rotating order, so that a slow moment of a shared
    machine falls on every runner of that round."""
    inner = {name: calibrate(run, target_s) for name, run in runners.items()}
    names = list(runners)
    rounds = []
    for r in range(reps):
        times = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[name](inner[name])
            times[name] = (time.perf_counter() - t0) / inner[name]
        rounds.append(times)
    return rounds


def alternating_rounds(runners: dict, reps: int, target_s: float = 0.2) -> list[dict]:
    """Seconds per step of each runner in ``reps`` rounds, the runners alternating
    step by step: a round is a number of cycles (about ``target_s`` of the
    slowest runner), each cycle one step of every runner in an order that
    rotates from cycle to cycle. A slow moment of a shared machine then falls
    on every runner of a round nearly alike, so the ratios taken within a round
    scatter less than with :func:`interleaved_rounds`, whose runners each take
    a block of steps in turn. (Each step is timed on its own: the Python call
    and the wait for its result, some 0.1 ms, add to every runner alike.)"""
    cycles = min(calibrate(run, target_s) for run in runners.values())
    names = list(runners)
    rounds = []
    for r in range(reps):
        total = dict.fromkeys(names, 0.0)
        for c in range(cycles):
            k = (r * cycles + c) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                runners[name](1)
                total[name] += time.perf_counter() - t0
        rounds.append({name: t / cycles for name, t in total.items()})
    return rounds


def spread(xs) -> dict:
    """Median, lowest and highest."""
    xs = list(xs)
    return {"median": statistics.median(xs), "lowest": min(xs), "highest": max(xs)}


def verdict(r: dict, target: float) -> str:
    """Whether a ratio's rounds (lowest to highest) are all at or below ``target``,
    all above it, or on both sides: then this run does not resolve it, whatever
    its median says."""
    if r["highest"] <= target:
        return "met in every round"
    if r["lowest"] > target:
        return "missed in every round"
    return "not resolved by this run"


def ratio_cell(r: dict, target: float | None) -> str:
    """A ratio for the report: where its rounds fall on both sides of its target,
    the spread, not a median that would read as an answer."""
    if target is not None and r["lowest"] <= target < r["highest"]:
        return f"not resolved by this run: {r['lowest']:.2f}-{r['highest']:.2f}"
    return f"{r['median']:.2f} ({r['lowest']:.2f}-{r['highest']:.2f})"
