r"""Block-wise 8-bit storage: one byte per element plus one float32 scale per block.

A float32 array of shape ``(..., nb, B)`` (``nb`` blocks of ``B`` elements; the
layout, padding and sharding belong to the caller) is stored as uint8 codes of
the same shape and one float32 scale per block, shape ``(..., nb)``:

.. math::

  \hat x_{kj} = v_{c_{kj}}\, s_k

where :math:`v_0 \le v_1 \le \dots \le v_{255}` is the kind's code map
(:func:`code_values`) and :math:`s_k` the block's scale. Quantizing picks, for
each element, the code of :math:`y = x / s_k` among the two neighbouring map
values :math:`v_i \le y \le v_{i+1}`: the nearest one (round-to-nearest), or
the upper one with probability :math:`p = (y - v_i) / (v_{i+1} - v_i)`
(stochastic rounding), which makes :math:`E[\hat x] = x`.

Two kinds of quantity are stored:

``"nu"``
  the second moment, non-negative and spanning many orders of magnitude within
  a block. Its map is an unsigned 8-bit float with 5 exponent and 3 mantissa
  bits (bias 31) and gradual underflow: 0, then :math:`m\,2^{-33}` for
  :math:`m = 1..7`, then :math:`(1 + m/8)\,2^{e - 31}` for :math:`e = 1..31`,
  :math:`m = 0..7`, up to 1.875. Every value from :math:`2^{-30}` of the top of
  the map upwards is kept to a relative error of 1/16 (round-to-nearest).
``"signed"``
  a mean or momentum buffer, symmetric around an exact 0. Its map is a
  sign-magnitude 8-bit float with 4 exponent and 3 mantissa bits (bias 15):
  magnitudes 0, :math:`m\,2^{-17}` (:math:`m = 1..7`), then
  :math:`(1 + m/8)\,2^{e - 15}` up to 1.875, with code :math:`128 + s` for the
  signed magnitude index :math:`s \in [-127, 127]`. Code 0 repeats code 1's
  value (-1.875) and is never produced, so that the map is its own mirror
  image.

The scale of a block is a power of two: the smallest :math:`s = 2^k` with
:math:`-126 \le k \le 127` such that the block's largest finite magnitude
:math:`a` satisfies :math:`a \le 1.875\, s`. Dividing by a power of two is
exact, so :math:`y` carries no rounding error of its own, and the largest
element of a block is stored with the map's relative precision (exactly when
it is a map value times :math:`s`). At the top of float32 (:math:`a > 1.875 \cdot
2^{127}`) the scale stops at :math:`2^{127}` and the largest magnitudes saturate
to the top code (an error of at most 6.25%, biased). An all-zero block gets
the scale :math:`2^{-126}` and the code of 0.

Non-finite input never spreads to the rest of its block: the scale comes from
the finite elements only. ``+inf`` is stored as the top code (1.875 s),
``-inf`` as the bottom one (``"signed"``; ``"nu"`` stores negative input as 0,
``-inf`` included); NaN is stored as the top code for ``"nu"`` (the most
conservative second moment: the smallest step) and as 0 for ``"signed"``.

Everything here is traced JAX with static shapes: it runs under ``jit`` and
``vmap``, with no host callback, on empty arrays too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

KINDS = ("nu", "signed")


def _minifloat(exponent_bits: int, mantissa_bits: int, bias: int) -> np.ndarray:
    """Every non-negative value of an unsigned float with the given fields, in
    order of the bit pattern (which is also increasing order), in float64."""
    p = np.arange(2 ** (exponent_bits + mantissa_bits))
    e = p >> mantissa_bits
    f = (p & (2**mantissa_bits - 1)) / 2.0**mantissa_bits
    return np.where(e == 0, f * 2.0 ** (1 - bias), (1 + f) * 2.0 ** (e - bias))


@dataclasses.dataclass(frozen=True)
class CodeMap:
    """A code map: ``values`` (256 sorted float32), whether it is ``signed``,
    how a block's scale is chosen (``"pow2"`` or ``"absmax"``), the lowest code
    quantizing produces, and the code NaN is stored as."""

    name: str
    values: np.ndarray
    signed: bool
    scale_rule: str
    lowest: int
    nan_code: int


def _e5m3() -> CodeMap:
    values = _minifloat(5, 3, 31).astype(np.float32)
    return CodeMap("e5m3", values, signed=False, scale_rule="pow2", lowest=0, nan_code=255)


def _e4m3_signed() -> CodeMap:
    mags = _minifloat(4, 3, 15)  # 128 magnitudes, the last 1.875
    values = np.concatenate([[-mags[127]], -mags[:0:-1], mags]).astype(np.float32)
    return CodeMap("e4m3_signed", values, signed=True, scale_rule="pow2", lowest=1, nan_code=128)


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


def _f32_bits(x: Array) -> Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _pow2_scale(absmax: Array, top: float) -> Array:
    r"""The smallest :math:`2^k`, :math:`-126 \le k \le 127`, with
    ``absmax <= top * 2**k``, for ``absmax >= 0`` (NaN counts as 0, inf as the
    float32 maximum), from the float32 bit fields: with
    :math:`a = 2^{e_a}(1 + m_a)` and :math:`t = 2^{e_t}(1 + m_t)`,
    :math:`k = e_a - e_t + [m_a > m_t]`."""
    t = int(np.float32(top).view(np.uint32))
    a = _f32_bits(absmax).astype(jnp.int32)
    biased = (a >> 23) - ((t >> 23) - 127) + ((a & 0x7FFFFF) > (t & 0x7FFFFF)).astype(jnp.int32)
    biased = jnp.where(jnp.isnan(absmax), 1, jnp.clip(biased, 1, 254))
    return jax.lax.bitcast_convert_type(biased << 23, jnp.float32)


def _divide_by_pow2(x: Array, scales: Array) -> Array:
    """``x / scales[..., None]`` for power-of-two ``scales``, exactly, on the bit
    fields: the exponent of ``x`` drops by that of the scale. A result below
    float32's smallest normal number is 0 (of ``x``'s sign), one above its
    largest is inf, as are infinite ``x`` (NaN stays NaN). Division by a
    broadcast scale is not used because XLA rewrites it as multiplication by a
    reciprocal, which is 0 on a backend that flushes subnormals (2**-127)."""
    bits = _f32_bits(x)
    k_plus_127 = (_f32_bits(scales) >> 23)[..., None]  # 1..254
    exponent = ((bits >> 23) & 0xFF).astype(jnp.int32)
    e_y = exponent - k_plus_127.astype(jnp.int32) + 127
    shifted = bits + ((254 - k_plus_127) << 23) - jnp.uint32(127 << 23)
    sign = bits & jnp.uint32(0x80000000)
    out = jnp.where(e_y < 1, sign, shifted)
    out = jnp.where((e_y > 254) | (exponent == 255), sign | jnp.uint32(0x7F800000), out)
    y = jax.lax.bitcast_convert_type(out, jnp.float32)
    return jnp.where(jnp.isnan(x), x, y)


def block_absmax(x: Array) -> Array:
    """Each block's largest finite magnitude (last axis reduced; 0 if none)."""
    finite = jnp.where(jnp.isfinite(x), jnp.abs(x), jnp.float32(0))
    return jnp.max(finite, axis=-1, initial=np.float32(0))


def scales_from_absmax(absmax: Array, cmap: CodeMap) -> Array:
    """The scales of blocks whose largest finite magnitudes are at most ``absmax``."""
    if cmap.scale_rule == "pow2":
        return _pow2_scale(absmax, float(cmap.values[-1]))
    return absmax


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


def _uniform(bits: Array) -> Array:
    """A uniform float32 in [0, 1) from the top 24 of 32 random bits."""
    return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def quantize_with(
    x: Array, cmap: CodeMap, bits: Array | None = None, absmax: Array | None = None
) -> tuple[Array, Array]:
    """:func:`quantize` with any :class:`CodeMap`, by a search of its sorted
    values (the benchmarks compare maps with it)."""
    x = jnp.asarray(x)
    _check(x, bits)
    scales = scales_from_absmax(block_absmax(x) if absmax is None else absmax, cmap)
    if cmap.scale_rule == "pow2":
        y = _divide_by_pow2(x, scales)
    else:
        s = scales[..., None]
        y = x / jnp.where(s > 0, s, jnp.float32(1))
    table = cmap.values[cmap.lowest :]
    y = jnp.clip(y, table[0], table[-1])  # saturates +-inf; negative "nu" input becomes 0
    t = jnp.asarray(table)
    i = jnp.clip(jnp.searchsorted(t, y, side="right") - 1, 0, table.size - 2)
    lo, hi = t[i], t[i + 1]
    # nearest (ties to the lower code), or up with probability (y - lo) / (hi - lo)
    up = (y - lo) > (hi - y) if bits is None else _uniform(bits) < (y - lo) / (hi - lo)
    codes = (i + up.astype(i.dtype) + cmap.lowest).astype(jnp.uint8)
    codes = jnp.where(jnp.isnan(x), jnp.uint8(cmap.nan_code), codes)
    return codes, scales


def dequantize_with(codes: Array, scales: Array, cmap: CodeMap) -> Array:
    """:func:`dequantize` with any :class:`CodeMap`: a table look-up."""
    return jnp.asarray(cmap.values)[codes.astype(jnp.int32)] * scales[..., None]


def quantize(
    x: Array, kind: str, bits: Array | None = None, absmax: Array | None = None
) -> tuple[Array, Array]:
    r"""Quantizes blocks of float32 to 8-bit codes and a scale per block.

    .. math::

      s_k = \min\{2^j : a_k \le 1.875\cdot 2^j\},\quad
      a_k = \max_j \{|x_{kj}| : x_{kj}\ \text{finite}\},\quad
      c_{kj} = Q(x_{kj} / s_k)

    where :math:`Q` rounds to one of the two neighbouring values of the code
    map (see the module docstring).

    Args:
      x: float32 array of shape ``(..., nb, B)``; the last axis is one block.
      kind: ``"nu"`` (non-negative) or ``"signed"``.
      bits: None to round to the nearest code; else a uint32 array of ``x``'s
        shape of uniform random bits, for unbiased stochastic rounding between
        the two neighbouring codes (:math:`E[\hat x] = x` to float32 rounding).
      absmax: None to take each block's largest finite magnitude from ``x``;
        else float32 of shape ``(..., nb)``, an upper bound of it (for example
        one computed without reducing ``x``), from which the scale is chosen
        by the same rule. Elements beyond ``1.875 * scale`` saturate to the
        top code.

    Returns:
      ``(codes, scales)``: uint8 of ``x``'s shape and float32 of shape ``(..., nb)``.
    """
    return quantize_with(x, code_map(kind), bits, absmax)


def dequantize(codes: Array, scales: Array, kind: str) -> Array:
    r"""The float32 values :math:`v_{c_{kj}}\, s_k` of codes ``(..., nb, B)``
    and scales ``(..., nb)`` of ``kind``."""
    return dequantize_with(codes, scales, code_map(kind))
