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

from rmsprop_jax import _storage
from rmsprop_jax import _validation as v

Array = jax.Array


def mask_leaves(mask: Any, params: Any, treedef: Any) -> list[Any]:
    """The mask's leaves, one per parameter leaf (all True without a mask).

    ``mask`` is a tree of booleans shaped like the parameters, or a function of
    the parameters returning one."""
    if mask is None:
        return [True] * treedef.num_leaves
    if callable(mask):
        mask = mask(params)
        v.check_mask_leaves(mask)
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


def _raise_if_nonzero(wd: Any) -> None:
    if np.any(np.asarray(wd) != 0):
        raise ValueError(
            f"`weight_decay` is {np.asarray(wd)} but `update` was called without "
            "`params`: weight decay needs them. Call `update(grads, state, params)`."
        )


def without_params(wd: Any, wd_t: Any) -> None:
    """Weight decay when ``update`` got no params: an error where it is known to
    be used; where its value is only known at run time (a hyperparameter that
    ``optax.inject_hyperparams`` traces), a check that raises at run time if it
    is not 0, and no decay term."""
    if callable(wd) or not v.is_traced(wd_t):
        if callable(wd) or not v.is_zero(wd_t):
            raise ValueError(
                "`params` must be passed to `update` when weight decay is "
                "used: call `update(grads, state, params)`."
            )
        return
    jax.debug.callback(_raise_if_nonzero, wd_t)


def coupled(g: Array, p: Array, wd: Any, real: jnp.dtype) -> Array:
    """:math:`g + \\lambda p`, in the gradient's working dtype, saturated at the
    largest finite value (a huge :math:`\\lambda p` must not make g infinite)."""
    work = g.dtype
    g = g + jnp.asarray(wd, real).astype(work) * p.astype(work)
    return _storage.saturate(g, real)


def decoupled(u: Array, p: Array, lr: Array, wd: Any, real: jnp.dtype) -> Array:
    """:math:`u - \\eta \\lambda p`, in the update's working dtype. The product
    :math:`\\eta\\lambda` is bounded by the largest finite value, so that it
    never meets a zero parameter as inf * 0."""
    work = u.dtype
    rate = jnp.minimum(lr * jnp.asarray(wd, real), jnp.finfo(real).max)
    return u - rate.astype(work) * p.astype(work)
