r"""Weight decay: the mask of each leaf, and the coupled and decoupled terms.

With :math:`\lambda` the weight decay (a schedule is evaluated at the step
count before the increment) and :math:`\eta` the learning rate:

- coupled (PyTorch's ``weight_decay``, L2 regularisation):
  :math:`g \leftarrow g + \lambda p`, before the moments;
- decoupled (AdamW-style, Keras): :math:`u \leftarrow u - \eta \lambda p`,
  after the step and outside the momentum buffer.

Elements whose mask entry is False get neither.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmsprop_jax import _dtypes, _storage, _trees
from rmsprop_jax import _validation as v

Array = jax.Array


def mask_leaves(mask: Any, params: Any, treedef: Any, paths: list[str]) -> list[Any]:
    """One mask entry per parameter leaf: True (all of it decays), False (none of
    it) or a boolean array of the parameter's shape (those elements).

    ``mask`` is a tree of booleans shaped like the parameters, or a prefix of
    it (a bool then covers a whole subtree), or a function of the parameters
    returning one. A 0-d boolean array counts as a bool. An array of any other
    shape than its parameter's is refused, naming the leaf: broadcasting it
    would change the shape of the update."""
    if mask is None:
        return [True] * treedef.num_leaves
    if callable(mask):
        mask = mask(params)
        v.check_mask_leaves(mask)
    mask_def: Any = jax.tree.structure(mask)
    try:
        per_subtree = mask_def.flatten_up_to(params)
    except (ValueError, TypeError):
        raise ValueError(
            "`weight_decay_mask` must have the tree structure of the parameters (or a "
            f"prefix of it); the mask has {mask_def}, the parameters "
            f"{treedef}."
        ) from None
    entries: list[Any] = []
    for m, subtree in zip(jax.tree.leaves(mask), per_subtree, strict=True):
        entries += [m] * len(jax.tree.leaves(subtree))
    out = []
    for path, m, p in zip(paths, entries, jax.tree.leaves(params), strict=True):
        if isinstance(m, (bool, np.bool_)):
            out.append(bool(m))
            continue
        shape = _trees.shape_and_dtype(p)[0]
        if tuple(np.shape(m)) != shape and np.ndim(m) != 0:
            raise ValueError(
                f"`weight_decay_mask` at {path or 'the root'} has shape {tuple(np.shape(m))}, "
                f"but the parameter there has shape {shape}: a mask array must have its "
                "parameter's shape (or be a single bool)."
            )
        out.append(m)
    return out


def _masked(term: Array, mask: Array | None) -> Array:
    return term if mask is None else jnp.where(mask, term, jnp.zeros((), term.dtype))


def coupled(g: Array, p: Array, mask: Array | None, wd: Array) -> Array:
    r""":math:`g + \lambda p`, in the gradient's working dtype, saturated at the
    largest finite value (a huge :math:`\lambda p` must not make g infinite)."""
    work = g.dtype
    term = wd.astype(work) * p.astype(work)
    return _storage.saturate(g + _masked(term, mask), _dtypes.real_dtype(work))


def decoupled(u: Array, p: Array, mask: Array | None, lr: Array, wd: Array, real: Any) -> Array:
    r""":math:`u - \eta \lambda p`, in the update's working dtype. The product
    :math:`\eta\lambda` is bounded by the largest finite value, so that it
    never meets a zero parameter as inf * 0."""
    work = u.dtype
    rate = jnp.minimum(lr.astype(real) * wd.astype(real), jnp.finfo(real).max)
    return u - _masked(rate.astype(work) * p.astype(work), mask)
