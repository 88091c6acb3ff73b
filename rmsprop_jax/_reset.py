"""``reset_state``: part of an optimizer state made new, the rest kept bit for bit.

Which state leaves belong to which parameter is found by running ``init`` once
more (abstractly, with ``jax.eval_shape``) on the parameters with every leaf
wrapped in a marker node that carries the leaf's index. Optax transforms make
per-parameter state by mapping over the parameter tree, so the markers come
through into the state around exactly the state of their parameter (an array,
a :class:`~rmsprop_jax.FactoredNu`, an ``optax.MaskedNode``), whatever wraps
it: ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``, ``masked``. Leaves
outside every marker (step counts, hyperparameters) are not any parameter's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from rmsprop_jax import _trees


class _Owner:
    """A parameter leaf wrapped with its index in ``jax.tree.leaves(params)``."""

    __slots__ = ("index", "value")

    def __init__(self, index: int, value: Any):
        self.index = index
        self.value = value


jax.tree_util.register_pytree_with_keys(
    _Owner,
    lambda m: (((jax.tree_util.GetAttrKey("value"), m.value),), m.index),
    lambda index, children: _Owner(index, next(iter(children))),
    lambda m: ((m.value,), m.index),
)


def _is_bool(x: Any) -> bool:
    if isinstance(x, (bool, np.bool_)):
        return True
    return (
        isinstance(x, (np.ndarray, jax.Array))
        and x.shape == ()
        and x.dtype == np.bool_
        and not isinstance(x, jax.core.Tracer)
    )


def _selected(mask: Any, params: Any, treedef: Any) -> list[bool]:
    """One bool per parameter leaf, from a bool, a prefix tree of bools, or a
    function of ``params`` returning either."""
    tree = mask(params) if callable(mask) else mask
    n = treedef.num_leaves
    index = treedef.unflatten(list(range(n)))
    try:
        parts = _trees.flatten(tree)[1].flatten_up_to(index)
    except (ValueError, TypeError):
        raise ValueError(
            f"`mask` must be a bool, or a tree of bools whose structure is a prefix of "
            f"`params`' ({treedef}); got structure {jax.tree.structure(tree)}."
        ) from None
    chosen = [False] * n
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, m), part in zip(flat, parts, strict=True):
        if not _is_bool(m):
            raise ValueError(
                f"`mask` at {jax.tree_util.keystr(path) or 'the root'} must be a bool "
                f"(True: reset that part of the state), got {m!r}."
            )
        for i in jax.tree.leaves(part):
            chosen[i] = bool(m)
    return chosen


def reset_state(
    optimizer: optax.GradientTransformation,
    state: optax.OptState,
    params: optax.Params,
    mask: Any | Callable[[optax.Params], Any],
) -> optax.OptState:
    r"""``state`` with the state of the parameters where ``mask`` is true made new.

    For every parameter leaf :math:`p_i` with ``mask`` true, each piece of state
    that belongs to it (for RMSprop :math:`\nu_i`, :math:`\mu_i` and the momentum
    buffer; in a chain, every transform's) is replaced by what
    ``optimizer.init(params)`` gives for it. Everything else is returned as it
    was, bit for bit, the step counts included (a schedule goes on where it
    was). Use it when part of a model changes under a running optimizer: a new
    output layer, a re-initialised layer, or a layer whose moved-in history no
    longer applies.

    It works through ``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps`` (whose accumulated gradients are reset with the rest)
    and ``optax.masked``, and on factored second moments. State not laid out
    per parameter (a single array for the whole tree) belongs to no parameter
    and is kept.

    Args:
      optimizer: the transform ``state`` was made by.
      state: its state.
      params: the parameters (arrays or ``ShapeDtypeStruct``); the new state
        pieces are ``optimizer.init(params)``'s.
      mask: which parameters to reset: a bool (all or none), a tree of bools
        whose structure is a prefix of ``params`` (a bool stands for the whole
        subtree below it), or a function of ``params`` returning either.

    Returns:
      The state, with the same structure as ``state``.

    Raises:
      ValueError: if ``mask`` is not such a tree of bools, or ``state`` does not
        have the structure of ``optimizer.init(params)``.

    Example:
      >>> import jax.numpy as jnp
      >>> import rmsprop_jax
      >>> opt = rmsprop_jax.rmsprop(0.1, momentum=0.9)
      >>> params = {"body": jnp.ones(2), "head": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> _, state = opt.update({"body": jnp.ones(2), "head": jnp.ones(2)}, state)
      >>> state = rmsprop_jax.reset_state(opt, state, params, {"body": False, "head": True})
      >>> state.nu["body"], state.nu["head"], int(state.count)
      (Array([0.1, 0.1], dtype=float32), Array([0., 0.], dtype=float32), 1)
    """
    leaves, treedef = _trees.flatten(params)
    chosen = _selected(mask, params, treedef)
    old, old_def = _trees.flatten(state)
    if not any(chosen):
        return state

    marked = treedef.unflatten([_Owner(i, x) for i, x in enumerate(leaves)])
    try:
        shaped = jax.eval_shape(optimizer.init, marked)
    except Exception as error:
        raise ValueError(
            "`reset_state` runs `optimizer.init` on the parameters with each leaf wrapped, "
            "to find which state belongs to which parameter, and that failed: the "
            "optimizer's init does not map over the parameter tree."
        ) from error
    is_owner = lambda x: isinstance(x, _Owner)
    owners_tree = jax.tree.map(
        lambda x: jax.tree.map(lambda _: x.index, x.value) if is_owner(x) else -1,
        shaped,
        is_leaf=is_owner,
    )
    owners, owners_def = _trees.flatten(owners_tree)
    if owners_def != old_def:
        raise ValueError(
            "`state` does not have the structure of `optimizer.init(params)`: the state "
            f"is {old_def}, init gives {owners_def}. Pass the optimizer the state was made "
            "by and the parameters it was made for."
        )
    fresh, fresh_def = _trees.flatten(optimizer.init(params))
    if fresh_def != old_def:  # init made another structure eagerly than abstractly
        raise ValueError(f"`optimizer.init(params)` gives {fresh_def}, but `state` is {old_def}.")
    new = [f if o >= 0 and chosen[o] else x for o, f, x in zip(owners, fresh, old, strict=True)]
    return old_def.unflatten(new)
