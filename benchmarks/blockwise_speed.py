"""Is a second-moment update with 8-bit state as fast as with float32 state?

Times, on a tree of about 25M parameters, the RMSprop second-moment update

    nu <- d * nu + (1 - d) * g**2,    u = g / sqrt(nu + eps)

with ``nu`` kept in float32, against the same update with ``nu`` kept as
8-bit block-wise codes (dequantize, update in float32, requantize), each
jitted with the state donated, in interleaved rounds (each round times every
variant once, in a rotating order, so that a busy moment of a shared machine
falls on all of them). The 8-bit variants differ in how the new block scales are found:

- ``exact``: from the new ``nu``'s block maxima (``quantize`` without
  ``scales``: a reduction over the new values that skips non-finite ones);
- ``bound``: ``ema_scales``, an upper bound of the new block maxima from the
  old scales and ``g`` alone, ``max_j (d s + (1 - d) g_j**2 / v_255)``;

each with round-to-nearest and with stochastic rounding (bits from a counter
hash, as the optimizer draws them).

Usage: python benchmarks/blockwise_speed.py [--quick] [--rounds N] [--hlo]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved_rounds, spread

from rmsprop_jax import _blockwise as bw
from rmsprop_jax import _storage

BLOCK = 256
DECAY = 0.99
EPS = 1e-8

# About 25M parameters: a transformer-like mix of leaf sizes (multiples of 256).
SHAPES = [(4096, 4096), (1024, 4096), (4096, 1024), (2048, 512), (512, 1024), (256, 256)]
QUICK_SHAPES = [(1024, 1024), (512, 1024), (256, 256)]


def _f32_step(nu, g):
    d = jnp.float32(DECAY)
    nu = d * nu + (1 - d) * g * g
    return nu, g / jnp.sqrt(nu + jnp.float32(EPS))


def _q8_step(mode: str, stochastic: bool):
    def step(state, g, key):
        codes, scales = state
        d = jnp.float32(DECAY)
        gb = g.reshape(codes.shape)
        nu = d * bw.dequantize(codes, scales, "nu") + (1 - d) * gb * gb
        u = (gb / jnp.sqrt(nu + jnp.float32(EPS))).reshape(g.shape)
        bits = _storage.hash_bits(key, nu.shape) if stochastic else None
        new_scales = None
        if mode == "bound":
            new_scales = bw.ema_scales(scales, gb, d, "nu", squared=True)
        return bw.quantize(nu, "nu", bits, new_scales), u

    return step


def _tree_step(leaf_step, with_key):
    def step(state, grads, key):
        out = [
            leaf_step(s, g, _storage.mix(key, i)) if with_key else leaf_step(s, g)
            for i, (s, g) in enumerate(zip(state, grads))
        ]
        return [o[0] for o in out], [o[1] for o in out]

    return jax.jit(step, donate_argnums=0)


def _runner(step, state, grads):
    box = {"state": state, "t": 0}

    def run(n: int) -> None:
        s = box["state"]
        for _ in range(n):
            box["t"] += 1
            s, u = step(s, grads, jnp.uint32(box["t"]))
        jax.block_until_ready((s, u))
        box["state"] = s

    run(2)
    return run


def _variants(shapes, seed=0):
    rng = np.random.default_rng(seed)
    grads = [
        jnp.asarray(rng.standard_normal(s, np.float32) * np.float32(10.0 ** rng.uniform(-3, 0)))
        for s in shapes
    ]
    nu0 = [g * g for g in grads]
    out = {}
    out["float32"] = (_tree_step(lambda s, g: _f32_step(s, g), False), [jnp.copy(n) for n in nu0])
    for mode in ("exact", "bound"):
        for stochastic in (False, True):
            name = f"8-bit, {mode}, {'stochastic' if stochastic else 'nearest'}"
            state = [bw.quantize(n.reshape(-1, BLOCK), "nu") for n in nu0]
            step = _q8_step(mode, stochastic)
            out[name] = (_tree_step(lambda s, g, k, step=step: step(s, g, k), True), state)
    return out, grads


def hlo_summary(step, state, grads) -> str:
    """Fusions, loops and reductions in the optimized HLO of one step."""
    text = step.lower(state, grads, jnp.uint32(1)).compile().as_text()
    entry = text[text.index("ENTRY") :]
    fusions = re.findall(r"= (\S+) fusion\(", entry)
    kinds = re.findall(r"kind=(k\w+)", entry)
    reduces = len(re.findall(r"\breduce\(", text))
    return (
        f"{len(fusions)} fusions in the entry computation ({', '.join(sorted(set(kinds)))}); "
        f"{reduces} reduce ops; outputs: {', '.join(sorted(set(fusions)))}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 1.6M parameters, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--hlo", action="store_true", help="print a summary of each optimized HLO")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = args.rounds or (3 if args.quick else 11)
    size = sum(int(np.prod(s)) for s in shapes)
    print(
        f"{size / 1e6:.1f}M parameters in {len(shapes)} leaves; jax {jax.__version__}, "
        f"{jax.devices()[0].device_kind}, {platform.machine()}; {rounds} interleaved rounds"
    )
    variants, grads = _variants(shapes)
    runners = {}
    for name, (step, state) in variants.items():
        if args.hlo:
            print(f"{name}: {hlo_summary(step, state, grads)}")
        runners[name] = _runner(step, state, grads)
    times = interleaved_rounds(runners, rounds, target_s=0.3)
    base = [t["float32"] for t in times]
    print(f"{'variant':34s} {'ms/step median [range]':>28s}   ratio to float32 median [range]")
    for name in runners:
        ts = [t[name] for t in times]
        ratio = [t / b for t, b in zip(ts, base)]
        s, r = spread(ts), spread(ratio)
        ms = f"{1e3 * s['median']:8.2f} [{1e3 * s['lowest']:.2f}, {1e3 * s['highest']:.2f}]"
        print(f"{name:34s} {ms}   {r['median']:.2f} [{r['lowest']:.2f}, {r['highest']:.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
