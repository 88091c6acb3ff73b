r"""Block-wise 8-bit state: one byte per parameter plus a float32 scale per block.

A state leaf with at least ``min_size`` elements is stored as
:class:`QuantizedArray`: ``codes``, uint8 and shaped like the state, index a
fixed non-linear map of 256 values (``rmsprop_jax._blockwise``), and
``scales`` hold one float32 per block of ``block_size`` consecutive elements.
The value of an element is ``map[code] * scale`` of its block.

The blocks are laid out so that a leaf needs no copy to be cut into them and
a block never straddles a shard:

- the state's shape is seen as ``shape[:k] + (L,)`` with ``L`` the product
  of the trailing axes ``shape[k:]``, and each row of ``L`` elements is cut
  into ``ceil(L / block_size)`` blocks (the last one padded, for the
  computation only: the codes are not padded). ``scales`` has shape
  ``shape[:k] + (ceil(L / block_size),)``, so ``k`` is read back from it.
- unsharded, ``k`` is the largest for which ``block_size`` divides ``L``
  (no padding), else 0 (the whole leaf is one row, padded once).
- sharded, the rows start at the last sharded axis ``j``: ``k = j`` when every
  shard's part of a row is a whole number of blocks (the scales' last axis is
  then sharded like axis ``j``), else ``k = j + 1``; a leaf sharded on its last
  axis whose shards do not hold whole blocks keeps float32 state.

A step dequantizes, updates in float32 and requantizes with new scales,
each from one reduction over the step's inputs (``rmsprop_jax._step``); the
codes are decoded and encoded from float32 bit fields
(``rmsprop_jax._blockwise``), elementwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rmsprop_jax import _blockwise, _trees

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Blockwise8bit:
    """The 8-bit block-wise storage format (see :func:`blockwise_8bit`)."""

    block_size: int = 256
    min_size: int = 4096

    def __repr__(self) -> str:
        return f"blockwise_8bit(block_size={self.block_size}, min_size={self.min_size})"


def blockwise_8bit(block_size: int = 256, min_size: int = 4096) -> Blockwise8bit:
    r"""8-bit block-wise optimizer state: about one byte per parameter.

    Pass it as ``nu_dtype`` (the second moment) or ``mu_dtype`` (the mean and
    the momentum buffer) wherever a state dtype is accepted::

      rmsprop_jax.rmsprop(1e-3, nu_dtype=rmsprop_jax.blockwise_8bit())

    A state leaf with at least ``min_size`` elements is stored as uint8 codes
    (shaped like the parameter) and one float32 scale per block of
    ``block_size`` elements, :math:`1 + 4/\text{block\_size}` bytes per
    parameter (1.016 at 256); smaller leaves keep float32 state (float64 for
    float64 parameters). Each step dequantizes, updates in float32,
    recomputes each block's scale and requantizes. With
    ``stochastic_rounding=True`` (recommended with this format) the codes are
    rounded stochastically, so that the stored value is unbiased, and the
    second moment's scales come from a bound that reads only the gradient;
    round-to-nearest lets a slow average whose increments are below
    half a code stall, and trains measurably worse (0.2% to 3% higher final
    loss on the documented tasks, consistently across seeds). docs/low_precision.md has the
    format, the code maps and their measured accuracy.

    Args:
      block_size: elements per block (a positive int).
      min_size: leaves with fewer elements keep full-precision state (an int >= 0).

    Returns:
      A hashable description of the format.

    Example:
      >>> import jax.numpy as jnp
      >>> import rmsprop_jax
      >>> opt = rmsprop_jax.rmsprop(1e-3, nu_dtype=rmsprop_jax.blockwise_8bit(min_size=0))
      >>> nu = opt.init({"w": jnp.zeros((4, 256))}).nu["w"]
      >>> nu.codes.dtype, nu.codes.shape, nu.scales.shape
      (dtype('uint8'), (4, 256), (4, 1))
    """
    for name, value, minimum in (("block_size", block_size, 1), ("min_size", min_size, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return Blockwise8bit(int(block_size), int(min_size))


class QuantizedArray(NamedTuple):
    """A state leaf in the 8-bit block-wise format."""

    codes: Array  # uint8, the state's shape: indices into the code map
    scales: Array  # float32, shape[:k] + (blocks per row,): each block's scale


# So that `jax.export` can serialize a step whose inputs or outputs hold it.
jax.export.register_namedtuple_serialization(
    QuantizedArray, serialized_name="rmsprop_jax.QuantizedArray"
)


def is_quantized(x: Any) -> bool:
    """Whether ``x`` is a state leaf in the 8-bit format (a :class:`QuantizedArray`,
    or a mapping of exactly ``codes`` and ``scales``, as ``flax.nnx`` may hold it)."""
    if isinstance(x, QuantizedArray):
        return True
    return isinstance(x, Mapping) and set(x) == {"codes", "scales"}


def _spec(sharding: NamedSharding | None, ndim: int) -> list[Any]:
    spec = list(sharding.spec) if sharding is not None else []
    return spec + [None] * (ndim - len(spec))


def _shards(mesh: Any, entry: Any) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(int(mesh.shape[name]) for name in names)


def layout(
    shape: tuple[int, ...], block: int, sharding: NamedSharding | None = None
) -> tuple[int, int] | None:
    """(k, blocks per row) for a state of ``shape`` (see the module's docstring);
    None where the shards cannot hold whole blocks (float32 state then)."""
    spec = _spec(sharding, len(shape))
    sharded = [d for d, entry in enumerate(spec) if entry is not None]
    row = lambda k: math.prod(shape[k:])
    if not sharded:
        k = next((k for k in range(len(shape) - 1, -1, -1) if row(k) % block == 0), 0)
        return k, -(-row(k) // block)
    assert sharding is not None
    j = sharded[-1]
    n = _shards(sharding.mesh, spec[j])
    if row(j) % (n * block) == 0:
        return j, row(j) // block
    if j + 1 < len(shape):
        return j + 1, -(-row(j + 1) // block)
    return None


def scales_sharding(
    sharding: NamedSharding | None, shape: tuple[int, ...], k: int
) -> NamedSharding | None:
    """The scales' sharding: the state's on the first ``k`` axes; the blocks'
    axis sharded like axis ``k`` when the rows start at a sharded axis."""
    if sharding is None:
        return None
    spec = _spec(sharding, len(shape))
    last = spec[k] if k < len(shape) else None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[:k], last))


def uses_blocks(fmt: Any, shape: tuple[int, ...]) -> bool:
    """Whether a state leaf of ``shape`` stored as ``fmt`` is quantized."""
    return isinstance(fmt, Blockwise8bit) and math.prod(shape) >= max(fmt.min_size, 1)


def init(x: Any, value: float, fmt: Blockwise8bit, kind: str, complex_parts: bool) -> Any:
    """A state leaf like ``x`` (an array, tracer or ShapeDtypeStruct) filled with
    ``value``, in the 8-bit format; float32 where its layout cannot be sharded.

    ``complex_parts``: the leaf holds a complex mean (real and imaginary parts
    on a trailing axis of 2)."""
    shape, _ = _trees.shape_and_dtype(x)
    sharding = _trees.named_sharding(x)
    if complex_parts:
        shape = (*shape, 2)
        if sharding is not None:
            spec = [*_spec(sharding, len(shape) - 1), None]
            sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec))
    lay = layout(shape, fmt.block_size, sharding)
    if lay is None:
        return None
    k, blocks = lay
    codes_value, scale = _constant(value, kind)
    codes = _trees.full(shape, codes_value, jnp.dtype(jnp.uint8), sharding)
    scales_shape = (*shape[:k], blocks)
    scales = _trees.full(
        scales_shape, scale, jnp.dtype(jnp.float32), scales_sharding(sharding, shape, k)
    )
    return QuantizedArray(codes, scales)


def _constant(value: Any, kind: str) -> tuple[Array, Array]:
    """(code, scale) that store ``value`` in every element of a block: those of
    a block of one element."""
    codes, scales = _blockwise.quantize(jnp.full((1, 1), value, jnp.float32), kind)
    return codes[0, 0], scales[0]


def check(q: Any, shape: tuple[int, ...], fmt: Any) -> str | None:
    """None if ``q`` is an 8-bit state leaf for a state of ``shape`` in ``fmt``;
    else what is wrong."""
    codes, scales = (
        (q.codes, q.scales)
        if isinstance(q, QuantizedArray)
        else (
            q["codes"],
            q["scales"],
        )
    )
    if not isinstance(fmt, Blockwise8bit):
        return "it is in the 8-bit format, but this optimizer stores that state as " + (
            "the parameter's dtype" if fmt is None else str(jnp.dtype(fmt))
        )
    if tuple(codes.shape) != shape or jnp.dtype(codes.dtype) != jnp.uint8:
        return f"its codes are {codes.dtype}{list(codes.shape)}, not uint8{list(shape)}"
    k = len(scales.shape) - 1
    if k < 0 or k > len(shape) or tuple(scales.shape[:k]) != shape[:k]:
        return f"its scales have shape {tuple(scales.shape)}, which does not fit {shape}"
    blocks = -(-math.prod(shape[k:]) // fmt.block_size)
    if scales.shape[-1] != blocks:
        return (
            f"its scales have shape {tuple(scales.shape)}, but blocks of {fmt.block_size} "
            f"need {blocks} per row: it was made with another `block_size`"
        )
    return None


def _blocks(x: Array, k: int, block: int) -> Array:
    """``x`` (the state's shape) as (..., blocks, block), zero-padded."""
    shape = x.shape
    row = math.prod(shape[k:])
    x = x.reshape(*shape[:k], row)
    pad = -row % block
    if pad:
        x = jnp.pad(x, [(0, 0)] * k + [(0, pad)])
    return x.reshape(*shape[:k], (row + pad) // block, block)


def _unblocks(x: Array, shape: tuple[int, ...], k: int) -> Array:
    row = math.prod(shape[k:])
    x = x.reshape(*shape[:k], -1)
    if x.shape[-1] != row:
        x = x[..., :row]
    return x.reshape(shape)


def _parts(q: Any) -> tuple[Array, Array]:
    return (q.codes, q.scales) if isinstance(q, QuantizedArray) else (q["codes"], q["scales"])


def load(q: Any, kind: str, block: int) -> Array:
    """The float32 values of an 8-bit state leaf, in the state's shape."""
    codes, scales = _parts(q)
    k = scales.ndim - 1
    values = _blockwise.dequantize(_blocks(codes, k, block), scales, kind)
    return _unblocks(values, tuple(codes.shape), k)


def in_blocks(x: Array, like: Any, block: int) -> Array:
    """``x`` (shaped like the state) cut into the blocks of ``like``: (..., nb, block)."""
    _, scales = _parts(like)
    return _blocks(x, scales.ndim - 1, block)


def blocks_to_reduce(x: Array, like: Any, block: int) -> Array:
    """``x`` cut into the blocks of ``like``, as the input of a reduction over
    each block (``x``'s dtype kept). Where the cut is a reshape (no padding) it
    is put behind an optimization barrier, which costs nothing (a reshape is a
    view) but keeps it out of the reduction's fusion: XLA:CPU runs a reduction
    whose fused input reshapes an array element by element (measured on a
    leaf of 8M elements: 8.5 ms against 0.7 ms for the largest square per
    block)."""
    _, scales = _parts(like)
    k = scales.ndim - 1
    blocks = _blocks(x, k, block)
    if math.prod(x.shape[k:]) % block:
        return blocks
    return jax.lax.optimization_barrier(blocks)


def codes_of(q: Any) -> Array:
    """The uint8 codes of an 8-bit state leaf."""
    return _parts(q)[0]


def scales_of(q: Any) -> Array:
    """The block scales of an 8-bit state leaf."""
    return _parts(q)[1]


TOP = {kind: float(_blockwise.code_values(kind)[-1]) for kind in ("nu", "signed")}
LARGEST_SCALE = {kind: _blockwise._largest_scale(top) for kind, top in TOP.items()}


def store(
    x: Array,
    like: Any,
    kind: str,
    block: int,
    bits: Array | None,
    scales: Array | None = None,
) -> Any:
    """``x`` (the state's shape) in the 8-bit format with the layout and the
    container of ``like``; ``bits`` (uint32, ``x``'s shape) round the codes
    stochastically; ``scales`` (per block), chosen by the caller so that they
    hold the new values, save the reduction over ``x``."""
    k = _parts(like)[1].ndim - 1
    shape = tuple(x.shape)
    x = x if x.dtype == jnp.float32 else x.astype(jnp.float32)
    blocks_bits = None if bits is None else _blocks(bits, k, block)
    codes, new_scales = _blockwise.quantize(_blocks(x, k, block), kind, blocks_bits, scales)
    codes = _unblocks(codes, shape, k)
    return _trees.flatten(like)[1].unflatten([codes, new_scales])  # codes sort first
