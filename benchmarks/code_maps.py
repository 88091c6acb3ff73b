"""Which 8-bit code map keeps a slow average best: measured, not assumed.

A moving average kept in 8-bit block-wise codes is dequantized, updated in
float32 and requantized at every step,

    nu <- Q(d * deq(nu) + (1 - d) * g**2),

and compared with the same average kept in float64. Candidates for the second
moment (non-negative, spanning orders of magnitude within a block):

- bitsandbytes' dynamic map, signed (what its RMSprop8bit uses for the squared
  average) and unsigned (what its Adam uses for the second moment), scaled by
  the block's absmax;
- E5M3, an unsigned 8-bit float (5 exponent bits, 3 mantissa bits, gradual
  underflow) scaled by a power of two; E4M4 likewise;
- a pure logarithmic grid: 0 and 255 values in geometric progression over 32
  binades below the block's absmax;
- sqrt(nu) stored instead of nu, with E4M4 or bitsandbytes' unsigned map
  (storing r = sqrt(nu) with map v is storing nu with map v**2; rounding is
  done between the two neighbouring values of nu, so stochastic rounding stays
  unbiased for nu itself);
- linear codes, the known-bad baseline.

Candidates for a signed buffer (the mean of the gradient, or momentum):
bitsandbytes' signed dynamic map, sign-magnitude E4M3, E3M4 and E5M2, and
signed linear codes.

Usage: python benchmarks/code_maps.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rmsprop_jax import _blockwise as bw
from rmsprop_jax import _storage

BLOCK = 256


# --- the maps -----------------------------------------------------------------


def _dynamic(signed: bool) -> np.ndarray:
    """bitsandbytes' dynamic map, rebuilt from its definition: for decade
    i = 0..6 (values 10**(i-6) * [0.1, 1]), 2**i (signed) or 2**(i+1)
    (unsigned) values at the midpoints of an even split of [0.1, 1], mirrored
    when signed; then 0 and 1."""
    data = []
    for i in range(7):
        n = 2**i if signed else 2 ** (i + 1)
        edges = np.linspace(0.1, 1.0, n + 1)
        mids = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        data += list(mids)
        if signed:
            data += list(-mids)
    data += [0.0, 1.0]
    assert len(data) == 256
    return np.sort(np.asarray(data, np.float64))


def _unsigned_float(e: int, m: int) -> np.ndarray:
    return bw._minifloat(e, m, 2**e - 1)


def _signed_float(e: int, m: int) -> np.ndarray:
    mags = bw._minifloat(e, m, 2**e - 1)  # 128 magnitudes
    return np.concatenate([[-mags[127]], -mags[:0:-1], mags])


def _map(name, values, signed=False) -> bw.CodeMap:
    values = np.asarray(values, np.float64)
    lowest = 1 if values[0] == values[1] else 0
    nan_code = int(np.searchsorted(values, 0.0)) if signed else 255
    return bw.CodeMap(name, values.astype(np.float32), lowest, nan_code)


# (map, how the block scale is chosen): "absmax" from the block's new largest
# magnitude; "bound" from ema_scales (d * (largest storable) + (1 - d) * |target|,
# maximised over the block, without reducing the new values); "stored" the same
# with the block's largest stored value in place of the largest storable;
# "pow2" the block's absmax rounded up so that the scale is a power of two.
@functools.cache
def nu_maps() -> dict[str, tuple[bw.CodeMap, str]]:
    log = np.concatenate([[0.0], 2.0 ** np.linspace(-32, 0, 255)])
    e5m3 = _unsigned_float(5, 3)
    e4m4 = _unsigned_float(4, 4)
    default = bw.code_map("nu")
    return {
        "bnb dynamic, signed (as bnb RMSprop8bit)": (_map("dyn", _dynamic(True)), "absmax"),
        "bnb dynamic, unsigned": (_map("udyn", _dynamic(False)), "absmax"),
        "E5M3 (default)": (default, "absmax"),
        "E5M3, scales from ema_scales": (default, "bound"),
        "E5M3, ema_scales from the stored max": (default, "stored"),
        "E5M3, power-of-two scale": (default, "pow2"),
        "E4M4": (_map("e4m4", e4m4), "absmax"),
        "log grid, 32 binades": (_map("log", log), "absmax"),
        "sqrt(nu) in E4M4": (_map("sqrt_e4m4", e4m4**2), "absmax"),
        "sqrt(nu) in E5M3": (_map("sqrt_e5m3", e5m3**2), "absmax"),
        "sqrt(nu) in bnb unsigned": (_map("sqrt_udyn", _dynamic(False) ** 2), "absmax"),
        "linear": (_map("ulinear", np.arange(256) / 255), "absmax"),
    }


@functools.cache
def signed_maps() -> dict[str, tuple[bw.CodeMap, str]]:
    default = bw.code_map("signed")
    return {
        "bnb dynamic, signed": (_map("dyn", _dynamic(True), signed=True), "absmax"),
        "E4M3 sign-magnitude (default)": (default, "absmax"),
        "E4M3, scales from ema_scales": (default, "bound"),
        "E4M3, ema_scales from the stored max": (default, "stored"),
        "E4M3, power-of-two scale": (default, "pow2"),
        "E3M4 sign-magnitude": (_map("e3m4", _signed_float(3, 4), signed=True), "absmax"),
        "E5M2 sign-magnitude": (_map("e5m2", _signed_float(5, 2), signed=True), "absmax"),
        "linear": (_map("linear", np.arange(-127, 129) / 128, signed=True), "absmax"),
    }


# --- the experiment -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """Per-coordinate gradients: ``g = mean + sigma * N(0, 1)`` each step, the
    magnitudes log-uniform over ``decades`` orders of magnitude, shuffled, so
    that every block of 256 holds the whole spread. With ``jump``, a random
    half of the coordinates has its gradient multiplied by 4 from mid-run on,
    so that coordinates of a block must move by different factors."""

    name: str
    noisy: bool
    decades: float
    signed_mean: bool = False  # a mean of random sign plus noise (signed buffers)
    jump: bool = False


def _coordinates(case: Case, n: int, seed: int):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-case.decades, 0.0, n)
    if case.signed_mean:
        mean = scale * rng.choice([-1.0, 1.0], n)
        sigma = 3.0 * scale
    elif case.noisy:
        mean, sigma = np.zeros(n), scale
    else:
        mean, sigma = scale, np.zeros(n)
    jump = np.where(rng.uniform(size=n) < 0.5, 4.0, 1.0) if case.jump else np.ones(n)
    return mean.astype(np.float32), sigma.astype(np.float32), jump.astype(np.float32)


def _gradient(coords, key, t, steps):
    mean, sigma, jump = coords
    z = jax.random.normal(jax.random.fold_in(key, t), mean.shape, jnp.float32)
    return jnp.where(t >= steps // 2, jump, jnp.float32(1)) * (mean + sigma * z)


@functools.cache
def _reference_fn(steps, every, square):
    """Jitted: the float64 averages for each decay at every ``every``-th step,
    shape (steps // every, decays, n)."""

    def run(coords, decays, key):
        def step(nu, t):
            g = _gradient(coords, key, t, steps).astype(jnp.float64)
            target = g * g if square else g
            return decays * nu + (1 - decays) * target, None

        def chunk(nu, c):
            nu, _ = jax.lax.scan(step, nu, c * every + jnp.arange(every))
            return nu, nu

        init = jnp.zeros((decays.shape[0], coords[0].shape[0]), jnp.float64)
        return jax.lax.scan(chunk, init, jnp.arange(steps // every))[1]

    return jax.jit(run)


def _reference(case, decays, steps, every, n, seed, square):
    coords = tuple(map(jnp.asarray, _coordinates(case, n, seed)))
    with jax.enable_x64(True):
        run = _reference_fn(steps, every, square)
        d = jnp.asarray(decays, jnp.float64)[:, None]
        return np.asarray(run(coords, d, jax.random.key(seed)))


def _scales(new, g, codes, scales, decays, cmap, mode, square):
    """The ``scales`` argument of the quantizer for scale ``mode``."""
    if mode == "absmax":
        return None
    if mode == "pow2":
        top = jnp.float32(cmap.values[-1])
        a = jnp.maximum(bw.block_absmax(new), jnp.float32(2.0**-100))
        return jnp.exp2(jnp.ceil(jnp.log2(a / top)))
    kind = "nu" if square else "signed"

    def one(c, s, d):
        stored = bw.stored_absmax(c, s, kind) if mode == "stored" else None
        return bw.ema_scales(s, g, d, kind, squared=square, stored=stored)

    return jax.vmap(one)(codes, scales, decays)


@functools.cache
def _quantized_fn(cmap, mode, stochastic, steps, every, square):
    """Jitted: the 8-bit averages for each decay at every ``every``-th step, the
    step each coordinate's stored value last changed, the final codes and scales."""

    def run(coords, decays, key, seed):
        n = coords[0].shape[0]
        nb, nd = n // BLOCK, decays.shape[0]
        d = decays[:, None, None]

        def step(carry, t):
            codes, scales, last = carry
            old = bw.dequantize_with(codes, scales, cmap)
            g = _gradient(coords, key, t, steps).reshape(nb, BLOCK)
            target = g * g if square else g
            new = d * old + (1 - d) * target
            bits = _storage.hash_bits(_storage.mix(seed, t), new.shape) if stochastic else None
            given = _scales(new, g, codes, scales, decays, cmap, mode, square)
            new_codes, scales = bw.quantize_with(new, cmap, bits, given)
            last = jnp.where(new_codes != codes, t, last)
            return (new_codes, scales, last), None

        def chunk(carry, c):
            carry, _ = jax.lax.scan(step, carry, c * every + jnp.arange(every))
            return carry, bw.dequantize_with(carry[0], carry[1], cmap).reshape(nd, n)

        zero = int(np.searchsorted(cmap.values, 0.0))
        init = (
            jnp.full((nd, nb, BLOCK), zero, jnp.uint8),
            jnp.ones((nd, nb), jnp.float32),
            jnp.zeros((nd, nb, BLOCK), jnp.int32),
        )
        (codes, scales, last), snaps = jax.lax.scan(chunk, init, jnp.arange(steps // every))
        return snaps, last.reshape(nd, n), codes.reshape(nd, n), scales

    return jax.jit(run)


def _half_gap(cmap, codes, scales, towards_up):
    """Half the distance from each stored value (codes (n,), scales (n / 256,))
    to its neighbouring code on the side of ``towards_up``."""
    v = cmap.values.astype(np.float64)
    c = codes.astype(int)
    s = np.repeat(scales.astype(np.float64), BLOCK)
    up = np.minimum(c + 1, 255)
    down = np.maximum(c - 1, 0)
    gap = np.where(towards_up, v[up] - v[c], v[c] - v[down])
    return 0.5 * gap * s


def measure(cmap, mode, case, decays, stochastic, steps, n, seed, square=True):
    """Error statistics of ``cmap`` (scales chosen by ``mode``) on ``case``,
    one dict per decay."""
    every = steps // 100
    ref = _reference(case, decays, steps, every, n, seed, square)
    coords = tuple(map(jnp.asarray, _coordinates(case, n, seed)))
    run = _quantized_fn(cmap, mode, stochastic, steps, every, square)
    out = run(
        coords,
        jnp.asarray(decays, jnp.float32),
        jax.random.key(seed),
        jnp.uint32(seed),
    )
    snaps, last, codes, scales = (np.asarray(a) for a in out)
    results = []
    for k in range(len(decays)):
        got, r = snaps[:, k].astype(np.float64), ref[:, k]
        window = slice(-10, None)  # the last tenth of the run, 10 snapshots
        if square:
            err = np.abs(got[window] - r[window]) / r[window]
        else:  # a signed buffer crosses 0: relative to its RMS over the window
            rms = np.sqrt(np.mean(r[window] ** 2, axis=0))
            err = np.abs(got[window] - r[window]) / rms
        final_err = np.abs(got[-1] - r[-1])
        half = _half_gap(cmap, codes[k], scales[k], r[-1] > got[-1])
        stalled = (last[k] < steps - steps // 10) & (final_err > half)
        results.append(
            {
                "median": float(np.median(err)),
                "p99": float(np.quantile(err, 0.99)),
                "stalled": float(stalled.mean()),
                "zeroed": float(np.mean((got[window] == 0) & (r[window] != 0))),
            }
        )
    return results


# --- the report ---------------------------------------------------------------


def _fmt(x):
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x:.1e}"


def _table(rows, columns):
    head = "| map | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [head, rule]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 steps, fewer coordinates")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("results_code_maps.md")
    )
    args = parser.parse_args(argv)
    steps = args.steps or (1000 if args.quick else 10_000)
    n = 2 * BLOCK if args.quick else 8 * BLOCK
    decays = (0.9, 0.99, 0.999)
    t0 = time.perf_counter()

    nu_cases = [
        Case("constant g, |g| over 3 decades", noisy=False, decades=3),
        Case("constant g over 3 decades, x4 for half of them from mid-run", False, 3, jump=True),
        Case("g ~ N(0, sigma^2), sigma over 3 decades", noisy=True, decades=3),
        Case("g ~ N(0, sigma^2), sigma over 6 decades", noisy=True, decades=6),
    ]
    out = [
        "# 8-bit code maps for optimizer state: measured",
        "",
        f"Written by `benchmarks/code_maps.py{' --quick' if args.quick else ''}` "
        f"({steps} steps, {n} coordinates in blocks of {BLOCK}; jax {jax.__version__}, "
        f"{platform.machine()}).",
        "",
        "Each cell: median / p99 of the relative error of the 8-bit average against the "
        "float64 one over the last tenth of the run (10 snapshots); then the fraction of "
        "coordinates *stalled* (stored value unchanged over the last tenth of the run and "
        "further from the float64 average than half the gap to the next code) and the "
        "fraction *zeroed* (stored as 0 while the float64 average is not).",
        "",
    ]
    for stochastic in (False, True):
        for case in nu_cases:
            title = "stochastic rounding" if stochastic else "round-to-nearest"
            out += [f"## nu = d nu + (1 - d) g^2; {case.name}; {title}", ""]
            rows = []
            for name, (cmap, mode) in nu_maps().items():
                cells = []
                for r in measure(cmap, mode, case, decays, stochastic, steps, n, seed=0):
                    cells.append(
                        f"{_fmt(r['median'])} / {_fmt(r['p99'])}; "
                        f"stalled {_fmt(r['stalled'])}, zeroed {_fmt(r['zeroed'])}"
                    )
                rows.append((name, cells))
                print(f"{title:20s} {case.name:42s} {name:40s}", *cells, sep=" | ", flush=True)
            out += [_table(rows, [f"d = {d}" for d in decays]), ""]

    signed_case = Case(
        "g = mu + 3|mu| N(0, 1), |mu| over 3 decades, random signs",
        noisy=True,
        decades=3,
        signed_mean=True,
    )
    for stochastic in (False, True):
        title = "stochastic rounding" if stochastic else "round-to-nearest"
        out += [
            f"## Signed buffer m = b m + (1 - b) g; {signed_case.name}; {title}",
            "",
            "Error relative to each coordinate's RMS float64 value over the window (the "
            "buffer crosses 0).",
            "",
        ]
        rows = []
        for name, (cmap, mode) in signed_maps().items():
            cells = []
            for r in measure(cmap, mode, signed_case, (0.9, 0.99), stochastic, steps, n, 1, False):
                cells.append(
                    f"{_fmt(r['median'])} / {_fmt(r['p99'])}; "
                    f"stalled {_fmt(r['stalled'])}, zeroed {_fmt(r['zeroed'])}"
                )
            rows.append((name, cells))
            print(f"{title:20s} signed {name:40s}", *cells, sep=" | ", flush=True)
        out += [_table(rows, ["b = 0.9", "b = 0.99"]), ""]

    out.append(f"Total time: {time.perf_counter() - t0:.0f} s.")
    args.out.write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
