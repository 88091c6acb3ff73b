r"""Block-wise 8-bit storage: one byte per element plus one float32 scale per block.

A float32 array of shape ``(..., nb, B)`` (``nb`` blocks of ``B`` elements; the
layout, padding and sharding belong to the caller) is stored as uint8 codes of
the same shape and one float32 scale per block, shape ``(..., nb)``:

.. math::

  \hat x_{kj} = v_{c_{kj}}\, s_k, \qquad s_k = a_k / v_{255}

where :math:`v_0 \le v_1 \le \dots \le v_{255}` is the kind's code map
(:func:`code_values`) and :math:`a_k` the block's largest finite magnitude, so
that the block's largest element lands on the top code (or the caller gives
the scales, e.g. from :func:`ema_scales`, a bound that needs no reduction of
the new values). Quantizing picks, for each element, one of the two map
values around :math:`y = x / s_k`, :math:`v_i \le y \le v_{i+1}`: the nearest
one (round-to-nearest), or the upper one with probability
:math:`p = (y - v_i) / (v_{i+1} - v_i)` (stochastic rounding), which makes
:math:`E[\hat x] = x`.

Two kinds of quantity are stored:

``"nu"``
  the second moment, non-negative and spanning orders of magnitude within a
  block. Its map is an unsigned 8-bit float with 5 exponent and 3 mantissa bits
  (E5M3, bias 31) with gradual underflow: 0, then :math:`m\,2^{-33}` for
  :math:`m = 1..7`, then :math:`(1 + m/8)\,2^{e - 31}` for :math:`e = 1..31`,
  :math:`m = 0..7`, up to 1.875. Every value down to :math:`2^{-31}` of the
  block's largest is kept to a relative error of at most 1/16
  (round-to-nearest). A positive value never becomes 0: below the smallest
  positive code it is stored as that code (an overestimate, so the step it
  divides gets smaller, never larger).
``"signed"``
  a mean or momentum buffer, symmetric around an exact 0: a sign and the
  magnitude in E4M3 (bias 15): 0, :math:`m\,2^{-17}` (:math:`m = 1..7`), then
  :math:`(1 + m/8)\,2^{e - 15}` up to 1.875; code :math:`128 + s` stands for
  the signed magnitude index :math:`s \in [-127, 127]`. Code 0 repeats code
  1's value (-1.875) and is never produced, so that the map is its own mirror
  image.

The codes are computed on float32 bit fields (the exponent and top mantissa
bits of :math:`y` are the code), not by searching the map, so a quantize or
dequantize is a few integer operations per element that XLA fuses into the
surrounding update.

The scale is kept between :math:`2^{-126}` and :math:`\mathrm{FLT\_MAX}/v_{255}`,
so it and its reciprocal are normal float32 numbers whatever the input. An
all-zero block gets the scale :math:`2^{-126}` and the code of 0.

Non-finite input never spreads to the rest of its block: the scale comes from
the finite elements only. ``+inf`` is stored as the top code, ``-inf`` as the
bottom one (``"signed"``; ``"nu"`` stores negative input, ``-inf`` included, as 0); NaN is
stored as the top code for ``"nu"`` (the most conservative second moment: the
smallest step) and as 0 for ``"signed"``.

Everything here is traced JAX with static shapes: it runs under ``jit`` and
``vmap``, with no host callback, on empty arrays too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

KINDS = ("nu", "signed")

_FMAX = float(np.finfo(np.float32).max)
_TINY = 2.0**-126


def _minifloat(exponent_bits: int, mantissa_bits: int, bias: int) -> np.ndarray:
    """Every non-negative value of an unsigned float with the given fields, in
    order of the bit pattern (which is also increasing order), in float64."""
    p = np.arange(2 ** (exponent_bits + mantissa_bits))
    e = p >> mantissa_bits
    f = (p & (2**mantissa_bits - 1)) / 2.0**mantissa_bits
    return np.where(e == 0, f * 2.0 ** (1 - bias), (1 + f) * 2.0 ** (e - bias))


# --- the bit-level codec of an unsigned float with M mantissa bits -------------


def _f32_bits(x: Array) -> Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _encode_magnitude(y: Array, m: int, bias: int, top: int, bits: Array | None) -> Array:
    r"""The pattern (an int32 in [0, top]) of ``y >= 0`` in an unsigned float
    with ``m`` mantissa bits and exponent bias ``bias``.

    Above the smallest normal value :math:`2^{1-b}` a pattern is the float32
    exponent, rebiased, and the top ``m`` mantissa bits: adding half a unit
    of the dropped bits (or ``23 - m`` random bits) before truncating rounds to
    nearest (or stochastically: within a binade a value is linear in its bits,
    so the chance of rounding up is the fraction of the gap covered). Below it
    the grid is linear, :math:`P = \lfloor y\,2^{b - 1 + m} + u \rfloor` with
    :math:`u = 1/2` or uniform. Values past the top (inf included) give
    ``top``; NaN gives an arbitrary pattern the caller replaces."""
    drop = 23 - m
    raw = _f32_bits(y)
    if bits is None:
        raw = raw + jnp.uint32(1 << (drop - 1))
        u = jnp.float32(0.5)
    else:
        raw = raw + (bits >> jnp.uint32(32 - drop))  # the high bits, the best-mixed
        u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    normal = (raw >> drop).astype(jnp.int32) - ((127 - bias) << m)
    sub = jnp.floor(y * jnp.float32(2.0 ** (bias - 1 + m)) + u).astype(jnp.int32)
    small = y < jnp.float32(2.0 ** (1 - bias))
    return jnp.clip(jnp.where(small, sub, normal), 0, top)


def _decode_magnitude(p: Array, m: int, bias: int) -> Array:
    """The value of pattern ``p`` (int32, non-negative): the inverse of
    :func:`_encode_magnitude`."""
    normal = jax.lax.bitcast_convert_type(
        (p + ((127 - bias) << m)).astype(jnp.uint32) << (23 - m), jnp.float32
    )
    sub = p.astype(jnp.float32) * jnp.float32(2.0 ** (1 - bias - m))
    return jnp.where(p < (1 << m), sub, normal)


def _encode_e5m3(y: Array, bits: Array | None) -> Array:
    return _encode_magnitude(jnp.maximum(y, jnp.float32(0)), 3, 31, 255, bits)


def _decode_e5m3(codes: Array) -> Array:
    return _decode_magnitude(codes.astype(jnp.int32), 3, 31)


def _encode_e4m3_signed(y: Array, bits: Array | None) -> Array:
    p = _encode_magnitude(jnp.abs(y), 3, 15, 127, bits)
    return 128 + jnp.where(y < 0, -p, p)


def _decode_e4m3_signed(codes: Array) -> Array:
    s = codes.astype(jnp.int32) - 128
    mag = _decode_magnitude(jnp.minimum(jnp.abs(s), 127), 3, 15)
    return jnp.where(s < 0, -mag, mag)


def _magnitude_arithmetic(p: Array, m: int, bias: int, one: ArrayLike) -> Array:
    r"""The value of pattern ``p`` (a float32 holding an integer in
    [0, 2^{e+m})) of an unsigned float with ``m`` mantissa bits and exponent
    bias ``bias``, in float arithmetic alone: with :math:`e = \lfloor p / 2^m
    \rfloor` and :math:`f = p - 2^m e`, the value is
    :math:`(2^m \min(e, 1) + f)\, 2^{\max(e, 1) - b - m}`, which is
    :math:`f\,2^{1-b-m}` below the normal range and
    :math:`(1 + f / 2^m)\, 2^{e-b}` above it. Every constant is multiplied by
    ``one`` (see :func:`decode_for_reduction`)."""
    k = lambda c: jnp.float32(c) * one
    e = jnp.floor(p * k(2.0**-m))
    f = p - k(2**m) * e
    lead = k(2**m) * jnp.minimum(e, k(1))
    # exp2(x) written as exp(x ln 2), as XLA expands it, so that ln 2 is a constant of ours.
    return (lead + f) * jnp.exp((jnp.maximum(e, k(1)) - k(bias + m)) * k(np.log(2.0)))


def decode_for_reduction(codes: Array, kind: str, one: ArrayLike = 1.0) -> Array:
    r"""The map values of ``codes`` (uint8) as float32, computed with float
    arithmetic only (a floor, a minimum and maximum, an exponential) instead
    of the bit fields of :func:`dequantize`: XLA:CPU reduces such an
    expression in one fast pass, while an integer or bit operation, or a
    comparison, in a reduction's input makes it run element by element
    (measured: 4 to 12 times slower on a leaf of 8M elements). The
    exponential is not exact, so the values agree with the map to about
    :math:`10^{-6}` relative, not bit for bit: use them to *choose scales*,
    not to store or step with.

    ``one``: a float32 1 that the compiler cannot see through (say, from an
    optimization barrier), multiplied into every constant. Without it, the
    constants of two leaves of one shape are the same broadcast to XLA,
    which then writes that broadcast to memory in full rather than compute it
    in each leaf's reduction."""
    c = codes.astype(jnp.float32)
    if kind == "nu":
        return _magnitude_arithmetic(c, 3, 31, one)
    code_map(kind)  # the error for an unknown kind
    k = lambda x: jnp.float32(x) * one
    s = c - k(128)  # the signed magnitude index, in [-128, 127]
    a = jnp.minimum(jnp.abs(s), k(127))
    # s / max(|s|, 1) is the sign of s (0 for 0), exactly, with no comparison.
    return _magnitude_arithmetic(a, 3, 15, one) * (s / jnp.maximum(jnp.abs(s), k(1)))


# --- code maps ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CodeMap:
    """A code map: its 256 sorted float32 ``values``; the lowest code
    quantizing produces; the code NaN is stored as; whether a positive input
    is kept off 0 (``floor_positive``); and, for the built-in maps, the
    bit-level ``encode(y, bits) -> int32 code`` and ``decode(codes) -> values``
    that replace the search of ``values``. Compared and hashed by identity
    (it holds an array), so it can be a static argument."""

    name: str
    values: np.ndarray
    lowest: int = 0
    nan_code: int = 255
    floor_positive: bool = False
    encode: Callable[[Array, Array | None], Array] | None = None
    decode: Callable[[Array], Array] | None = None


def _e5m3() -> CodeMap:
    values = _minifloat(5, 3, 31).astype(np.float32)
    return CodeMap("e5m3", values, 0, 255, True, _encode_e5m3, _decode_e5m3)


def _e4m3_signed() -> CodeMap:
    mags = _minifloat(4, 3, 15)  # 128 magnitudes, the last 1.875
    values = np.concatenate([[-mags[127]], -mags[:0:-1], mags]).astype(np.float32)
    return CodeMap("e4m3_signed", values, 1, 128, False, _encode_e4m3_signed, _decode_e4m3_signed)


_MAPS: dict[str, CodeMap] = {"nu": _e5m3(), "signed": _e4m3_signed()}


def code_map(kind: str) -> CodeMap:
    """The :class:`CodeMap` of ``kind`` (``"nu"`` or ``"signed"``)."""
    try:
        return _MAPS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.") from None


def code_values(kind: str) -> np.ndarray:
    """The 256 values of ``kind``'s code map, sorted, as float32: code ``c``
    of a block with scale ``s`` stands for ``code_values(kind)[c] * s``."""
    return code_map(kind).values.copy()


def stored_absmax(codes: Array, scales: Array, kind: str) -> Array:
    r"""Each block's largest stored magnitude, :math:`\max_j |v_{c_j}|\, s`,
    from the largest (and, for ``"signed"``, the most negative) code of the
    block. The reduction runs over the codes converted to float32, which
    XLA:CPU fuses into the reduction."""
    cmap = code_map(kind)
    table = jnp.asarray(cmap.values)
    as_float = codes.astype(jnp.float32)
    if cmap.values[0] < 0:  # the map is symmetric about code 128
        mag = block_max(jnp.abs(as_float - 128))
        largest = table[128 + jnp.minimum(mag.astype(jnp.int32), 127)]
    else:
        largest = table[block_max(as_float).astype(jnp.int32)]
    return largest * scales


def ema_scales(
    scales: Array,
    g: Array,
    decay: ArrayLike,
    kind: str,
    *,
    squared: bool,
    stored: Array | None = None,
) -> Array:
    r"""Scales for the next value of a moving average, without reducing it.

    For :math:`x' = d\,\hat x + (1 - d)\, t` with :math:`t = g^2`
    (``squared``) or :math:`t = g`, every element satisfies
    :math:`|x'_j| \le d\, a + (1 - d) |t_j|`, where :math:`a` bounds the
    block's stored magnitudes (``stored``, e.g. from :func:`stored_absmax`;
    by default the largest the block can hold, :math:`v_{255} s`). So

    .. math::

      s' = \min\big(d\, a / v_{255} + (1 - d) \max_j |t_j| / v_{255}
           + 2^{-126},\ s_{\max}\big)

    is a valid scale for :math:`x'` (its elements are at most
    :math:`v_{255} s'`), kept in :math:`[2^{-126}, \mathrm{FLT\_MAX}/v_{255}]`;
    :math:`d` and :math:`1 - d` carry a margin of :math:`2^{-20}` for the
    rounding of the caller's own :math:`d x + (1 - d) t` and of the terms
    here. The one reduction over the elements is the largest :math:`g^2`
    (or :math:`|g|`) of each block, which XLA:CPU runs as one fast pass over
    ``g``; the rest is per block, kept out of the reduction's fusion by an
    optimization barrier (work fused after a reduction makes it several
    times slower). Its result feeds :func:`quantize` through ``scales=``. A
    block whose :math:`t` overflows gets the largest scale; a NaN in ``g``
    makes its block's scale NaN (discard such steps, e.g. with
    ``optax.apply_if_finite``).

    Args:
      scales: the block scales of :math:`\hat x`, float32 ``(..., nb)``.
      g: float32 ``(..., nb, B)``.
      decay: :math:`d` in [0, 1].
      kind: ``"nu"`` or ``"signed"``.
      squared: whether :math:`t = g^2` (else :math:`t = g`).
      stored: None, or float32 ``(..., nb)``: a bound of each block's stored
        magnitudes tighter than :math:`v_{255} s`.
    """
    top = float(code_map(kind).values[-1])
    d = jnp.asarray(decay, jnp.float32)
    a = scales if stored is None else stored / jnp.float32(top)
    margin = jnp.float32(1 + 2.0**-20)
    c = (1 - d) * (margin / jnp.float32(top))
    largest_t = jax.lax.optimization_barrier(block_max(g * g if squared else jnp.abs(g)))
    v = d * margin * a + c * largest_t + jnp.float32(_TINY)
    return jnp.minimum(v, _largest_scale(top))


# --- quantize and dequantize ----------------------------------------------------


def block_max(v: Array) -> Array:
    """The maximum over the last axis (0 for an empty one). A plain reduction,
    nothing applied to its result in the same expression: XLA:CPU runs such a
    reduction fast, but slowly once elementwise work on the result is fused
    into it."""
    if v.shape[-1] == 0:
        return jnp.zeros(v.shape[:-1], v.dtype)
    return jnp.max(v, axis=-1)


def block_absmax(x: Array) -> Array:
    """Each block's largest finite magnitude (last axis reduced; 0 if none).
    The select that drops non-finite values does not fuse into the reduction
    on XLA:CPU, which then writes a float32 temporary of ``x``."""
    return block_max(jnp.where(jnp.isfinite(x), jnp.abs(x), jnp.float32(0)))


def _largest_scale(top: float) -> np.float32:
    """The largest float32 ``s`` with ``top * s`` at most FLT_MAX in float32."""
    s = np.float32(_FMAX / top)
    with np.errstate(over="ignore"):
        while not np.isfinite(np.float32(top) * s):
            s = np.nextafter(s, np.float32(0))
    return s


def scales_from_absmax(absmax: Array, cmap: CodeMap) -> Array:
    """The scales of blocks whose largest magnitudes are ``absmax``:
    ``absmax / v_255``, kept in [2**-126, FLT_MAX / v_255] (a non-finite
    ``absmax`` counts as FLT_MAX)."""
    top = float(cmap.values[-1])
    a = jnp.where(jnp.isfinite(absmax), absmax, jnp.float32(_FMAX))
    return jnp.clip(a / jnp.float32(top), jnp.float32(_TINY), _largest_scale(top))


def _divide(x: Array, scales: Array) -> Array:
    """``x / scales[..., None]`` as two multiplications by normal float32
    numbers: XLA turns a division by a broadcast value into a multiplication
    by its reciprocal, which is subnormal (flushed to 0 on CPUs) for scales
    above 2**126; such blocks are first multiplied by 2**-8 (an element that
    this takes below the normal range is far below the map's range)."""
    big = scales > jnp.float32(2.0**100)
    pre = jnp.where(big, jnp.float32(2.0**-8), jnp.float32(1))
    inv = jnp.float32(1) / (scales * pre)
    return (x * pre[..., None]) * inv[..., None]


def _check(x: Array, bits: Array | None) -> None:
    if x.dtype != jnp.float32 or x.ndim < 2:
        raise ValueError(
            f"`x` must be a float32 array of shape (..., blocks, block_size); "
            f"got {x.dtype} of shape {x.shape}."
        )
    if bits is not None and (bits.dtype != jnp.uint32 or bits.shape != x.shape):
        raise ValueError(
            f"`bits` must be None or a uint32 array of `x`'s shape {x.shape}; "
            f"got {bits.dtype} of shape {bits.shape}."
        )


def _search(y: Array, cmap: CodeMap, bits: Array | None) -> Array:
    """The code of ``y`` by a search of the map's sorted values."""
    table = cmap.values[cmap.lowest :]
    y = jnp.clip(y, table[0], table[-1])  # saturates +-inf; negative input to an unsigned map: 0
    t = jnp.asarray(table)
    i = jnp.clip(jnp.searchsorted(t, y, side="right") - 1, 0, table.size - 2)
    lo, hi = t[i], t[i + 1]
    if bits is None:  # nearest; a tie goes to the lower code
        up = (y - lo) > (hi - y)
    else:
        up = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24) < (y - lo) / (hi - lo)
    return i + up.astype(i.dtype) + cmap.lowest


def quantize_with(
    x: Array,
    cmap: CodeMap,
    bits: Array | None = None,
    scales: Array | None = None,
    *,
    search: bool = False,
) -> tuple[Array, Array]:
    """:func:`quantize` with any :class:`CodeMap`; ``search=True`` searches the
    map's values even where a bit-level codec exists (a reference for tests)."""
    x = jnp.asarray(x)
    _check(x, bits)
    if scales is None:
        scales = scales_from_absmax(block_absmax(x), cmap)
    y = _divide(x, scales)
    codes = _search(y, cmap, bits) if search or cmap.encode is None else cmap.encode(y, bits)
    if cmap.floor_positive:
        codes = jnp.where(x > 0, jnp.maximum(codes, 1), codes)
    codes = jnp.where(jnp.isnan(x), cmap.nan_code, codes).astype(jnp.uint8)
    return codes, scales


def dequantize_with(codes: Array, scales: Array, cmap: CodeMap, *, search: bool = False) -> Array:
    """:func:`dequantize` with any :class:`CodeMap` (``search=True``: by a
    look-up in its values even where a bit-level codec exists)."""
    if search or cmap.decode is None:
        values = jnp.asarray(cmap.values)[codes.astype(jnp.int32)]
    else:
        values = cmap.decode(codes)
    return values * scales[..., None]


def quantize(
    x: Array, kind: str, bits: Array | None = None, scales: Array | None = None
) -> tuple[Array, Array]:
    r"""Quantizes blocks of float32 to 8-bit codes and a scale per block.

    .. math::

      s_k = a_k / v_{255},\quad
      a_k = \max_j \{|x_{kj}| : x_{kj}\ \text{finite}\},\quad
      c_{kj} = Q(x_{kj} / s_k)

    where :math:`Q` rounds to one of the two neighbouring values of the code
    map (see the module docstring) and :math:`s_k` is kept in
    :math:`[2^{-126}, \mathrm{FLT\_MAX}/v_{255}]`.

    Args:
      x: float32 array of shape ``(..., nb, B)``; the last axis is one block.
      kind: ``"nu"`` (non-negative) or ``"signed"``.
      bits: None to round to the nearest code; else a uint32 array of ``x``'s
        shape of uniform random bits, for unbiased stochastic rounding between
        the two neighbouring codes (:math:`E[\hat x] = x` to float32 rounding;
        for ``"nu"``, not below the smallest positive code, where a positive
        value is always rounded up).
      scales: None to compute each block's scale from ``x`` (a reduction
        over each block that skips non-finite elements); else float32 of
        shape ``(..., nb)`` in :math:`[2^{-126}, \mathrm{FLT\_MAX}/v_{255}]`,
        used as given, e.g. from :func:`ema_scales` (elements beyond
        :math:`v_{255} s_k` saturate at the top code).

    Returns:
      ``(codes, scales)``: uint8 of ``x``'s shape and float32 of shape ``(..., nb)``.
    """
    return quantize_with(x, code_map(kind), bits, scales)


def dequantize(codes: Array, scales: Array, kind: str) -> Array:
    r"""The float32 values :math:`v_{c_{kj}}\, s_k` of codes ``(..., nb, B)``
    and scales ``(..., nb)`` of ``kind``."""
    return dequantize_with(codes, scales, code_map(kind))
