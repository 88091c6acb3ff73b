"""Storing state: casts to the storage dtype, saturation, stochastic rounding.

Nothing here is RMSprop: these are the numerics of keeping a float32 (or
float64) result in a narrower dtype. Round-to-nearest drops every increment
smaller than half a unit in the last place, so a slow average (decay 0.999)
kept in bfloat16 stops moving; stochastic rounding rounds up or down at random
with the probabilities that make the expected stored value exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmsprop_jax import _dtypes

Array = jax.Array


def _word(w: Any) -> Array:
    """An integer as a uint32 (modulo 2**32). A Python int goes through NumPy's
    uint32, so that a seed in [2**31, 2**32) needs no 64-bit mode."""
    if isinstance(w, (int, np.integer)):
        return jnp.asarray(np.uint32(int(w) % 2**32))
    return jnp.asarray(w).astype(jnp.uint32)


def mix(*words: Any) -> Array:
    """A 32-bit key from integers (seed, step, leaf, buffer), hashed in turn (FNV-1a
    style, with a shift to spread the high bits)."""
    h = jnp.uint32(0x811C9DC5)
    for w in words:
        h = (h ^ _word(w)) * jnp.uint32(0x01000193)
        h = h ^ (h >> 15)
    return h


def _index(shape: tuple[int, ...]) -> Array:
    """Each element's position in row-major order, as uint32 (modulo 2**32)."""
    size = int(np.prod(shape))
    return jax.lax.iota(jnp.uint32, size).reshape(shape)


def hash_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """32 well-spread random bits per element, from a counter-based hash of
    (key, element index): the murmur3 finaliser of the index mixed with a
    32-bit key, a few integer operations that XLA fuses into the step.
    Rounding needs well-spread bits, not cryptographic ones; the result is
    deterministic."""
    if int(np.prod(shape)) == 0:
        return jnp.zeros(shape, jnp.uint32)
    x = _index(shape) * jnp.uint32(0x9E3779B1) + key
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def round_bits(key: Array, shape: tuple[int, ...]) -> Array:
    r"""Random bits for stochastic rounding, in the *high* bits of a uint32 per
    element: one xorshift-multiply round of a Weyl sequence,

    .. math:: x = i \cdot \varphi + k, \qquad
              h = (x \oplus (x \gg 15)) \cdot c \bmod 2^{32},

    where :math:`i` is the element's index and :math:`k` a 32-bit key that
    changes every step. A multiply carries every bit of its operand into the
    high bits of the product and none into the low ones, so the callers take
    the high bits (16 for bfloat16). For each element, :math:`k` makes the bits
    uniform and independent from step to step, which is what makes the rounding
    unbiased; the xorshift breaks the lattice that neighbouring elements'
    bits would otherwise form (``tests/test_low_precision.py`` checks both).
    Two multiplies per element where :func:`hash_bits` takes three."""
    if int(np.prod(shape)) == 0:
        return jnp.zeros(shape, jnp.uint32)
    x = _index(shape) * jnp.uint32(0x9E3779B1) + key
    return (x ^ (x >> 15)) * jnp.uint32(0x2C1B3C6D)


def _drop_bits(x: Array, drop: int, bits: Array) -> Array:
    """Rounds float32 ``x`` to ``23 - drop`` mantissa bits stochastically: adds
    ``drop`` random bits (the high ones of ``bits``) below the kept ones and
    truncates. The magnitude rounds up with probability equal to the fraction
    of the gap it covers, for either sign; inf stays inf (its low bits are 0,
    so nothing carries)."""
    mask = jnp.uint32((1 << drop) - 1)
    raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type((raw + (bits >> (32 - drop))) & ~mask, jnp.float32)


def stochastic_round(x: Array, dtype: jnp.dtype, key: Array) -> Array:
    r"""Rounds ``x`` to ``dtype`` up or down at random, unbiasedly.

    .. math:: P(\text{up}) = (x - \lfloor x \rfloor) / (\lceil x \rceil - \lfloor x \rfloor)

    where the floor and ceiling are ``x``'s neighbours in ``dtype``, so the
    expected result is ``x`` exactly. From float32 it works on the bits
    (bfloat16 keeps float32's exponent, so dropping 16 mantissa bits is exact;
    float16 drops 13 in its normal range and uses its fixed 2**-24 grid below
    it), which XLA cannot simplify away as it may a float round trip. ``x``
    must lie within ``dtype``'s range (callers saturate first). The random
    bits are :func:`round_bits`."""
    dtype = jnp.dtype(dtype)
    if x.dtype == jnp.float32 and dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        bits = round_bits(key, jnp.shape(x))
        if dtype == jnp.bfloat16:
            return _drop_bits(x, 16, bits).astype(dtype)
        normal = _drop_bits(x, 13, bits)
        u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
        grid = jnp.floor(x * jnp.float32(2.0**24) + u) * jnp.float32(2.0**-24)
        return jnp.where(jnp.abs(x) < jnp.float32(2.0**-14), grid, normal).astype(dtype)
    # Other pairs (a float64 computation stored narrower): between neighbours.
    nearest = x.astype(dtype)
    back = nearest.astype(x.dtype)
    err = x - back
    other = jnp.nextafter(nearest, jnp.where(err > 0, jnp.inf, -jnp.inf).astype(dtype))
    gap = other.astype(x.dtype) - back  # same sign as err, or inf at the top of the range
    ok = (err != 0) & jnp.isfinite(gap) & (gap != 0)
    p = jnp.where(ok, err / jnp.where(ok, gap, 1), 0)
    uniform = (round_bits(key, jnp.shape(x)) >> 8).astype(x.dtype) * 2.0**-24
    return jnp.where(uniform < p, other, nearest)


def saturate_to(x: Array, largest: Array) -> Array:
    """Clips ``x`` to [-largest, largest], real and imaginary parts separately
    for complex ``x`` (NaN stays NaN)."""
    if jnp.iscomplexobj(x):
        largest = jnp.real(largest) if jnp.iscomplexobj(largest) else largest
        return jax.lax.complex(saturate_to(jnp.real(x), largest), saturate_to(jnp.imag(x), largest))
    # One clamp (JAX broadcasts its scalar bounds when it lowers it).
    largest = jnp.asarray(largest).astype(x.dtype)
    return jax.lax.clamp(-largest, x, largest)


def saturate(x: Array, dtype: jnp.dtype) -> Array:
    """Clips ``x`` to the finite range of ``dtype``."""
    largest = jnp.finfo(_dtypes.real_dtype(jnp.dtype(dtype))).max
    return saturate_to(x, jnp.asarray(largest, x.dtype))


def store(x: Array, dtype: jnp.dtype, key: Array | None, saturated: bool = False) -> Array:
    """Casts a new state value to its storage dtype, stochastically if ``key`` is given.

    With ``saturated``, a value beyond a *narrower* storage dtype's range is
    stored as its largest finite value (only then: at full precision nothing
    is added to the step)."""
    if x.dtype == dtype:
        return x
    narrower = jnp.finfo(dtype).bits < jnp.finfo(x.dtype).bits
    if saturated and narrower:
        x = saturate(x, dtype)
    if key is not None and narrower:
        if jnp.iscomplexobj(x):
            real = _dtypes.real_dtype(jnp.dtype(dtype))
            return jax.lax.complex(
                stochastic_round(jnp.real(x), real, mix(key, 1)),
                stochastic_round(jnp.imag(x), real, mix(key, 2)),
            ).astype(dtype)
        return stochastic_round(x, dtype, key)
    return x.astype(dtype)
