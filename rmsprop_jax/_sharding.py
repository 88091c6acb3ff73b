"""Sharding helpers: ZeRO stage 1 for the optimizer state.

The state's leaves already carry their parameters' shardings (``init`` builds
them *like* the parameters), and the update is elementwise, so a sharded
update needs no communication. ``shard_state`` goes further for data-parallel
training, where parameters are replicated over the data axis: it splits each
state leaf over that axis too, so that every device stores 1/N of the state.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rmsprop_jax import _factored, _quantized


def _spec_of(leaf: Any, ndim: int) -> list[Any]:
    sharding = getattr(leaf, "sharding", None)
    spec = list(getattr(sharding, "spec", ()) or ())
    return spec + [None] * (ndim - len(spec))


def _mentions(spec: list[Any], axis: str) -> bool:
    return any(entry == axis or (isinstance(entry, tuple) and axis in entry) for entry in spec)


def shard_state(state: Any, mesh: Mesh, axis: str) -> Any:
    """Shardings that split every optimizer-state leaf over a data-parallel axis.

    For each leaf of ``state`` (arrays, or ``jax.ShapeDtypeStruct`` from
    ``jax.eval_shape(optimizer.init, params)``), the leaf's own sharding (its
    parameter's, or replicated) is kept and ``axis`` is added on the largest
    dimension that is not sharded yet and that the size of ``axis`` divides.
    A leaf with no such dimension (a scalar such as ``count``, or odd sizes),
    or that is already sharded over ``axis``, keeps its sharding, and so do the
    factors of a factored second moment (they are O(rows + cols)). An 8-bit
    leaf's codes and scales are split on the same axis, chosen so that every
    shard holds whole blocks (else they keep their sharding). Use the result
    as the state's ``out_shardings`` (ZeRO stage 1): per-device state memory
    falls by the size of ``axis``, and results do not change.

    Args:
      state: the optimizer state, or its shapes.
      mesh: the device mesh.
      axis: the name of the data-parallel mesh axis.

    Returns:
      A tree of :class:`jax.sharding.NamedSharding` shaped like ``state``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rmsprop_jax
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> state = rmsprop_jax.rmsprop(0.1).init({"w": jnp.zeros((4, 3))})
      >>> rmsprop_jax.shard_state(state, mesh, "data").nu["w"].spec
      P('data', None)
    """
    if axis not in mesh.shape:
        raise ValueError(
            f"`axis` must be one of the mesh's axes {tuple(mesh.shape)}, got {axis!r}."
        )
    size = mesh.shape[axis]

    def one(leaf: Any) -> NamedSharding:
        shape = tuple(leaf.shape)
        spec = _spec_of(leaf, len(shape))
        if not _mentions(spec, axis):
            free = [
                d
                for d in range(len(shape))
                if spec[d] is None and shape[d] % size == 0 and shape[d] > 0
            ]
            if free:
                spec[max(free, key=lambda d: (shape[d], -d))] = axis
        return NamedSharding(mesh, PartitionSpec(*spec))

    def keep(leaf: Any) -> NamedSharding:
        return NamedSharding(mesh, PartitionSpec(*_spec_of(leaf, len(leaf.shape))))

    def blocks(q: Any) -> Any:
        # 8-bit state: codes and scales split on the same axis, where every
        # shard then holds whole blocks: an axis before the rows (the scales
        # have it too), or the rows' first axis when the rows are unpadded and
        # their blocks divide evenly.
        codes, scales = (q.codes, q.scales) if hasattr(q, "codes") else (q["codes"], q["scales"])
        shape, k = tuple(codes.shape), len(scales.shape) - 1
        c_spec, s_spec = _spec_of(codes, len(shape)), _spec_of(scales, k + 1)
        if not _mentions(c_spec, axis):
            free = [d for d in range(k) if c_spec[d] is None and shape[d] % size == 0]
            blocks_per_row = scales.shape[-1]
            row = math.prod(shape[k:])
            if free:
                d = max(free, key=lambda d: (shape[d], -d))
                c_spec[d] = s_spec[d] = axis
            elif (
                k < len(shape)
                and c_spec[k] is None
                and s_spec[k] is None
                and shape[k] % size == 0
                and blocks_per_row % size == 0
                and row % blocks_per_row == 0
            ):
                c_spec[k] = s_spec[k] = axis
        return jax.tree.map(
            lambda leaf: NamedSharding(mesh, PartitionSpec(*(c_spec if leaf is codes else s_spec))),
            q,
        )

    def place(x: Any) -> Any:
        # A factored second moment is O(rows + cols): its factors keep their own
        # sharding (splitting both over one axis would shard their outer
        # product twice over it).
        if _factored.is_factored(x):
            return jax.tree.map(keep, x)
        if _quantized.is_quantized(x):
            return blocks(x)
        return one(x)

    leaf = lambda x: _factored.is_factored(x) or _quantized.is_quantized(x)
    return jax.tree.map(place, state, is_leaf=leaf)
