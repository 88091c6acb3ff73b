r"""The factored second moment (Adafactor; Shazeer and Stern, 2018).

For a leaf whose two largest axes :math:`a < b` both have at least
``min_dim_size_to_factor`` entries, the state keeps moving averages of
:math:`|g|^2` over each of the two axes instead of the full :math:`\nu`:

.. math::

  r &\leftarrow \rho\, r + (1 - \rho)\, \operatorname{mean}_b |g|^2, \qquad
  c \leftarrow \rho\, c + (1 - \rho)\, \operatorname{mean}_a |g|^2 \\
  \hat\nu &= r\, c / \operatorname{mean}_a r

(the rank-one estimate whose row and column means are :math:`r` and
:math:`c`), so a leaf's state is O(rows + cols) instead of O(rows * cols).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rmsprop_jax import _trees

Array = jax.Array


class FactoredNu(NamedTuple):
    """A factored second moment: moving averages of :math:`|g|^2` over rows and columns."""

    row: Array  # mean over the second factored axis, kept as a size-1 dimension
    col: Array  # mean over the first factored axis, kept as a size-1 dimension


# So that `jax.export` can serialize a step whose inputs or outputs hold it.
jax.export.register_namedtuple_serialization(FactoredNu, serialized_name="rmsprop_jax.FactoredNu")


def factored_axes(shape: tuple[int, ...], min_dim_size: int) -> tuple[int, int] | None:
    """The two largest axes (in order; ties go to the later axis) if both reach
    ``min_dim_size`` and 2, else None (the leaf keeps a full second moment): an
    axis of size 1 is never factored, whatever ``min_dim_size``."""
    if len(shape) < 2:
        return None
    a, b = sorted(sorted(range(len(shape)), key=lambda d: (shape[d], d))[-2:])
    if min(shape[a], shape[b]) < max(2, min_dim_size):
        return None
    return a, b


def factor_axes(nu: Any, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The factored axes (a, b) of a factored second moment for a gradient of
    ``shape``, read from the two factors' shapes; None if ``nu`` is not two
    arrays that factor that shape."""
    leaves = jax.tree.leaves(nu)
    if len(leaves) != 2 or not all(hasattr(x, "shape") for x in leaves):
        return None
    reduced = []
    for x in leaves:
        if len(x.shape) != len(shape):
            return None
        differ = [d for d in range(len(shape)) if x.shape[d] != shape[d]]
        if len(differ) != 1 or x.shape[differ[0]] != 1:
            return None
        reduced.append(differ[0])
    if reduced[0] == reduced[1]:
        return None
    a, b = sorted(reduced)
    return a, b


def is_factored(x: Any) -> bool:
    """Whether ``x`` is a factored second moment: a :class:`FactoredNu`, or a
    mapping of exactly ``row`` and ``col`` (``flax.nnx`` state may hold one so).
    The two factors are told apart by their shapes (:func:`unpack`), never by
    their order."""
    return isinstance(x, FactoredNu) or (isinstance(x, Mapping) and set(x) == {"row", "col"})


def init(p: Any, axes: tuple[int, int], value: Any, dtype: jnp.dtype) -> FactoredNu:
    """Factors filled with ``value``, sharded like ``p`` on the axes they keep."""
    a, b = axes
    return FactoredNu(
        row=_trees.full_like(p, value, dtype, reduced_axis=b),
        col=_trees.full_like(p, value, dtype, reduced_axis=a),
    )


def unpack(nu: Any, axes: tuple[int, int]) -> tuple[Array, Array, Callable[[Any, Any], Any]]:
    """(row, col, rebuild): ``rebuild(new_row, new_col)`` returns ``nu``'s own container."""
    leaves, treedef = _trees.flatten(nu)
    first_is_row = leaves[0].shape[axes[1]] == 1 and leaves[0].shape[axes[0]] != 1
    row, col = leaves if first_is_row else leaves[::-1]

    def rebuild(new_row: Any, new_col: Any) -> Any:
        return treedef.unflatten([new_row, new_col] if first_is_row else [new_col, new_row])

    return row, col, rebuild


def _mean(x: Array, axis: int) -> Array:
    """The mean over ``axis``, keeping it; each term is divided before the sum, so
    that values up to the largest finite number average without overflowing."""
    return jnp.sum(x * (1 / x.shape[axis]), axis=axis, keepdims=True)


def finite_square(g: Array) -> Array:
    r"""Where :math:`|g|^2` is finite (False where it overflowed, or ``g`` is NaN).

    For real ``g`` this is :math:`|g| < 2^{e/2}`, ``e`` the dtype's ``maxexp``:
    the largest float below :math:`2^{e/2}` squares to less than the largest
    finite value plus half its ulp, and :math:`2^{e/2}` squares to :math:`2^e`,
    which rounds to inf. It needs no square, so that the compiled step has no
    product :math:`g \cdot g` besides those of the two sums (see :func:`means`)."""
    if jnp.iscomplexobj(g):
        return _square(g) < jnp.inf
    limit = 2.0 ** (jnp.finfo(g.dtype).maxexp // 2)
    return jax.lax.lt(jax.lax.abs(g), jnp.asarray(limit, g.dtype))


def _square(g: Array) -> Array:
    """:math:`|g|^2` as ``g * g`` (real) or ``re^2 + im^2`` (complex)."""
    if jnp.iscomplexobj(g):
        re, im = jax.lax.real(g), jax.lax.imag(g)
        return re * re + im * im
    return g * g


def means(g: Array, axes: tuple[int, int], real: jnp.dtype) -> tuple[Array, Array]:
    r"""The means of :math:`|g|^2` over axis ``b`` (rows) and over axis ``a``
    (columns), squares that overflowed (or are NaN) left out.

    Where every square and both sums are finite, each mean is its sum divided by
    the number of terms. The two sums square ``g`` separately (the second behind
    an optimization barrier, so that XLA cannot merge the two products): XLA's
    CPU backend then reduces straight from ``g`` twice rather than writing
    :math:`|g|^2` out in full and reading it back (a leaf-sized temporary, fresh
    memory on every step). Elsewhere, a ``lax.cond`` takes the masked mean, each
    term divided before the sum (:func:`_mean`), which stays finite."""
    a, b = axes
    row_sum = jnp.sum(_square(g), axis=b, keepdims=True)
    twin = jax.lax.optimization_barrier(g)
    col_sum = jnp.sum(_square(twin), axis=a, keepdims=True)
    ok = jnp.logical_and(jnp.all(jnp.isfinite(row_sum)), jnp.all(jnp.isfinite(col_sum)))

    def divided() -> tuple[Array, Array]:
        return row_sum / g.shape[b], col_sum / g.shape[a]

    def masked() -> tuple[Array, Array]:
        g2 = _square(g)
        g2 = jnp.where(g2 < jnp.inf, g2, 0)
        return _mean(g2, b), _mean(g2, a)

    row, col = jax.lax.cond(ok, divided, masked)
    return row.astype(real), col.astype(real)


def update(
    g: Array,
    row: Array,
    col: Array,
    axes: tuple[int, int],
    decay: Array | None,
    one_minus_decay: Array,
    real: jnp.dtype,
) -> tuple[Array, Array, Array]:
    """(row, col, finite): the moving averages of |g|^2 over the rows and over
    the columns, and where |g|^2 is finite.

    A square that overflowed (|g|^2 = inf) is left out of the averages, which
    stay finite (they are also bounded by the largest finite number), and that
    coordinate's step is made 0 (see ``_step.normalise``): the factored
    counterpart of a full second moment that becomes inf there. ``decay`` is
    None where it is zero."""
    largest = jnp.finfo(real).max
    mean_row, mean_col = means(g, axes, real)
    new_row = one_minus_decay * mean_row
    new_col = one_minus_decay * mean_col
    if decay is not None:
        new_row = new_row + decay * row.astype(real)
        new_col = new_col + decay * col.astype(real)
    return jnp.minimum(new_row, largest), jnp.minimum(new_col, largest), finite_square(g)


def scales(row: Array, col: Array, a: int, correction: Array | None) -> tuple[Array, Array]:
    r"""(x, y), the factors of the debiased estimate :math:`\hat\nu_{ij} = x_i y_j`:

    .. math:: x = r / \operatorname{mean}_a r, \qquad y = c / (1 - \rho^t)

    (the correction of :math:`r` cancels in :math:`x`); :math:`x = 0` where the
    mean is 0. Both are as small as the factors: the step multiplies them per
    element, and takes roots of them rather than of the full estimate where it
    can (``_step.normalise``)."""
    scale = _mean(row, a)
    ok = scale > 0
    x = jnp.where(ok, row / jnp.where(ok, scale, 1), 0)
    y = col if correction is None else col / correction
    return x, y


def estimate(row: Array, col: Array, a: int) -> Array:
    """The full second moment from its factors: (row / mean(row)) * col.

    Dividing first keeps the product from overflowing: row / mean(row) is at
    most the number of rows."""
    x, y = scales(row, col, a, None)
    return x * y
