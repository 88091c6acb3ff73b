r"""Weight decay: the mask, each leaf's decay, and the coupled and decoupled terms.

With :math:`\lambda` the weight decay (a schedule is evaluated at the step
count before the increment) and :math:`\eta` the learning rate:

- coupled (PyTorch's ``weight_decay``, L2 regularisation):
  :math:`g \leftarrow g + \lambda p`, before the moments;
- decoupled (AdamW-style, Keras): :math:`u \leftarrow u - \eta \lambda p`,
  after the step and outside the momentum buffer.

Leaves whose mask entry is False get neither.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def mask_leaves(mask: Any, params: Any, treedef: Any) -> list[Any]:
    """The mask's leaves, one per parameter leaf (all True without a mask).

    ``mask`` is a tree of booleans shaped like the parameters, or a function of
    the parameters returning one."""
    if mask is None:
        return [True] * treedef.num_leaves
    if callable(mask):
        mask = mask(params)
    mask_def = jax.tree.structure(mask)
    if mask_def != treedef:
        raise ValueError(
            "`weight_decay_mask` must have the same tree structure as the "
            f"parameters; the mask has {mask_def}, the parameters {treedef}."
        )
    return jax.tree.leaves(mask)


def leaf_value(wd: Any, mask: Any) -> Any:
    """The weight decay of one leaf: None where the mask is a Python False."""
    if wd is None or mask is False or mask is None:
        return None
    if isinstance(mask, (bool, np.bool_)):
        return wd if mask else None
    return jnp.where(jnp.asarray(mask, bool), jnp.asarray(wd), 0)


def coupled(g: Array, p: Array, wd: Any, real: jnp.dtype) -> Array:
    """:math:`g + \\lambda p`, in the gradient's working dtype."""
    work = g.dtype
    return g + jnp.asarray(wd, real).astype(work) * p.astype(work)


def decoupled(u: Array, p: Array, lr: Array, wd: Any, real: jnp.dtype) -> Array:
    """:math:`u - \\eta \\lambda p`, in the update's working dtype."""
    work = u.dtype
    return u - (lr * jnp.asarray(wd, real).astype(work)) * p.astype(work)
