"""``tf.compat.v1.train.RMSPropOptimizer``'s slots to :class:`~rmsprop_jax.RMSpropState`.

TensorFlow 1 keeps three slot variables per variable: ``rms`` (the mean
square, starting at one), ``mg`` (the mean gradient, centered only) and
``momentum`` (always made, even with ``momentum=0``). It keeps no step count.
Nothing here imports TensorFlow: the slots arrive as arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from rmsprop_jax import _migrate, presets
from rmsprop_jax._core import RMSpropState

_SLOTS = {"rms": "nu", "mg": "mu", "momentum": "trace"}


def tf1_slots(
    checkpoint: Any,
    names: Any,
    *,
    centered: bool = False,
    optimizer_name: str = "RMSProp",
) -> dict[str, Any]:
    """Reads the slots of ``names`` out of a TensorFlow 1 checkpoint's variables.

    TensorFlow 1 names the slot variables of a variable ``v`` after the
    optimizer, in the order it makes them: ``v/RMSProp`` (``rms``), then
    ``v/RMSProp_1`` (``mg`` if centered, else ``momentum``) and ``v/RMSProp_2``
    (``momentum``, centered only).

    Args:
      checkpoint: the checkpoint's variables: a mapping from names to arrays,
        or an object with ``get_tensor(name)``, such as
        ``tf.train.load_checkpoint(path)`` (this function calls only that).
      names: the TensorFlow variable names, a pytree with the structure of
        the JAX parameters (a string per leaf).
      centered: whether the optimizer was centered (it decides which slot is which).
      optimizer_name: the optimizer's ``name`` argument (``"RMSProp"``).

    Returns:
      ``{"rms": tree, "momentum": tree}`` (and ``"mg"`` when centered), each
      tree shaped like ``names`` with NumPy arrays, for :func:`from_tf1`.

    Raises:
      ValueError: if a slot is missing from the checkpoint, naming it.
    """
    get = checkpoint.get_tensor if hasattr(checkpoint, "get_tensor") else None
    order = ["rms", "mg", "momentum"] if centered else ["rms", "momentum"]

    def read(name: str, i: int) -> np.ndarray:
        key = f"{name}/{optimizer_name}" + (f"_{i}" if i else "")
        try:
            return np.array(get(key) if get is not None else checkpoint[key])
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"The checkpoint has no `{key}` (the {order[i]!r} slot of {name!r}): "
                "check `optimizer_name` and `centered`."
            ) from error

    return {
        slot: jax.tree.map(lambda name, i=i: read(name, i), names) for i, slot in enumerate(order)
    }


def from_tf1(
    slots: Mapping[str, Any],
    params: Any,
    *,
    momentum: float = 0.0,
    centered: bool = False,
    count: int = 0,
    layout: _migrate.Layout | None = None,
) -> RMSpropState:
    r"""The state that continues a TensorFlow 1 ``RMSPropOptimizer`` run with
    :func:`presets.tensorflow_v1`.

    TensorFlow 1's slots map onto :class:`~rmsprop_jax.RMSpropState` as

    .. math::

      \nu = \texttt{rms}, \qquad \mu = \texttt{mg}, \qquad
      \texttt{trace} = -\texttt{momentum}, \qquad \texttt{count} = \text{count}

    (TensorFlow's :math:`mom \leftarrow \mu\, mom + \eta g/\sqrt{ms + \epsilon},\
    p \leftarrow p - mom` holds the buffer with the gradient's sign; ``trace``
    holds it with the update's). TensorFlow 1 has no step count: pass the
    global step as ``count`` if a schedule reads it.

    Args:
      slots: ``{"rms": tree, "momentum": tree}`` and, if centered, ``"mg"``;
        each tree has the structure of ``params`` and holds arrays (NumPy,
        or anything ``np.asarray`` reads), e.g. from :func:`tf1_slots`.
      params: the JAX parameters, a pytree of arrays; the state takes their
        dtypes and shardings.
      momentum: the optimizer's ``momentum``; only whether it is above 0
        matters (with 0, the ``momentum`` slot is not needed and not read).
      centered: the optimizer's ``centered``.
      count: the step count to store (the global step), for schedules.
      layout: leaf path to a function from TensorFlow's layout to the JAX one.

    Returns:
      The :class:`~rmsprop_jax.RMSpropState` for
      ``presets.tensorflow_v1(learning_rate, decay, momentum, epsilon, centered)``.

    Raises:
      ValueError: if a slot is missing or unknown, or a tree or shape differs
        from ``params``.

    Example:
      >>> import numpy as np
      >>> import jax.numpy as jnp
      >>> from rmsprop_jax import migrate
      >>> params = {"w": jnp.zeros(2)}
      >>> slots = {"rms": {"w": np.array([0.5, 2.0])}, "momentum": {"w": np.zeros(2)}}
      >>> migrate.from_tf1(slots, params, count=7).nu["w"]
      Array([0.5, 2. ], dtype=float32)
    """
    if not isinstance(slots, Mapping):
        raise ValueError(
            "`slots` must be a mapping from slot names ('rms', 'mg', 'momentum') to "
            f"trees of arrays, got {type(slots).__name__}."
        )
    unknown = sorted(set(slots) - set(_SLOTS))
    if unknown:
        raise ValueError(
            f"`slots` has {unknown[0]!r}, which is not a slot of TensorFlow 1's RMSprop "
            "('rms', 'mg', 'momentum')."
        )
    if "mg" in slots and not centered:
        raise ValueError(
            "`slots` has 'mg', which only a centered optimizer makes: pass `centered=True` "
            "if the run was centered."
        )
    has_momentum = bool(momentum > 0)
    needed = ["rms"] + (["mg"] if centered else []) + (["momentum"] if has_momentum else [])
    for slot in needed:
        if slot not in slots:
            raise ValueError(
                f"`slots` has no {slot!r}, which an optimizer with "
                f"`momentum={momentum!r}, centered={centered!r}` keeps."
            )
    leaves = _migrate.Leaves(params)
    fns = _migrate.layouts(leaves, layout)
    template = presets.tensorflow_v1(
        0.0, momentum=0.5 if has_momentum else 0.0, centered=centered
    ).init(params)
    fields: dict[str, list[Any]] = {name: [None] * len(leaves) for name in _SLOTS.values()}
    for slot in needed:
        try:
            values = leaves.treedef.flatten_up_to(slots[slot])
        except (ValueError, TypeError):
            raise ValueError(
                f"`slots[{slot!r}]` has structure {jax.tree.structure(slots[slot])}, but "
                f"`params` has {leaves.treedef}: give one array per parameter."
            ) from None
        name = _SLOTS[slot]
        for j, x in enumerate(values):
            value = _migrate.to_state_layout(x, fns[j], split=False)
            fields[name][j] = -value if name == "trace" else value

    def describe(name: str, j: int) -> str:
        slot = next(s for s, n in _SLOTS.items() if n == name)
        return f"The {slot!r} slot at {leaves.name(j)!r}"

    return _migrate.fill(template, leaves, fields, _migrate.check_count(count, "`count`"), describe)
