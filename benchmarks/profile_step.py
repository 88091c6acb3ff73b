"""Where one optimizer step's time goes, fusion by fusion.

Runs a donated, jitted ``rmsprop`` step (update plus ``apply_updates``) under
``jax.profiler`` with a Perfetto trace and sums the time of each compiled
fusion (XLA:CPU names one trace event per fusion, copy and reduction, and one
per thread where a loop is split over threads). The runtime may run
independent fusions at once, so the per-fusion times can add up to more
than the step; the step's own wall-clock time (median, without the
profiler) is printed first.

    python benchmarks/profile_step.py [--state 8bit|8bit-sr|bf16|f32]
        [--momentum 0.9] [--tree resnet50|gpt2_small|leaf] [--steps 10]

``--tree leaf`` is one 2048 x 4096 leaf. docs/performance.md ("Where the
time went") was written from this script's output.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import trees

import rmsprop_jax

STATES = {
    "f32": dict(),
    "bf16": dict(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16),
    "8bit": dict(nu_dtype=rmsprop_jax.blockwise_8bit(), mu_dtype=rmsprop_jax.blockwise_8bit()),
    "8bit-sr": dict(
        nu_dtype=rmsprop_jax.blockwise_8bit(),
        mu_dtype=rmsprop_jax.blockwise_8bit(),
        stochastic_rounding=True,
    ),
}


def profile(state: str, momentum: float, tree: str, steps: int) -> tuple[float, list]:
    """(median wall-clock ms per step, without the profiler; [(event name
    without its number, ms per step, events per step)]). A loop split over
    threads is one event per thread."""
    shapes = {"w": (2048, 4096)} if tree == "leaf" else getattr(trees, tree)()
    opt = rmsprop_jax.rmsprop(1e-3, decay=0.9, momentum=momentum, **STATES[state])

    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    run = jax.jit(step, donate_argnums=(0, 1))
    key = jax.random.PRNGKey(0)
    params = {
        name: jax.random.normal(jax.random.fold_in(key, i), shape)
        for i, (name, shape) in enumerate(shapes.items())
    }
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    state_ = opt.init(params)
    for _ in range(3):
        params, state_ = run(params, state_, grads)
    jax.block_until_ready(params)
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        params, state_ = run(params, state_, grads)
        jax.block_until_ready(params)
        walls.append((time.perf_counter() - start) * 1e3)
    with tempfile.TemporaryDirectory() as where:
        with jax.profiler.trace(where, create_perfetto_trace=True):
            for _ in range(steps):
                params, state_ = run(params, state_, grads)
            jax.block_until_ready(params)
        (trace,) = pathlib.Path(where).rglob("*.trace.json.gz")
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            name = e["name"].rstrip("0123456789.")
            total[name] += e["dur"] / 1e3
            count[name] += 1
    step_ms = statistics.median(walls)
    kernels = [
        (name, ms / steps, count[name] / steps)
        for name, ms in total.items()
        if ("fusion" in name or name.startswith(("copy", "reduce", "custom")))
        and not name.startswith("end:")
    ]
    return step_ms, sorted(kernels, key=lambda k: -k[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", default="8bit-sr", choices=sorted(STATES))
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--tree", default="leaf", choices=["leaf", "resnet50", "gpt2_small"])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    step_ms, kernels = profile(args.state, args.momentum, args.tree, args.steps)
    print(f"{args.state} state, momentum {args.momentum}, {args.tree}: {step_ms:.2f} ms a step")
    for name, ms, n in kernels[:15]:
        print(f"  {ms:8.3f} ms  x{n:<4g} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
