"""Checking a restored optimizer state against the optimizer it is restored into.

Checkpoint libraries restore into whatever template they are given: a state
saved with ``centered=True`` can come back into a non-centered template, and
a float32 second moment can be cast silently into a bfloat16 one. The state's
layout records the options that shape it (``mu`` only when centered, ``trace``
only with momentum, the storage dtypes, split complex shapes), so comparing
layouts catches a checkpoint made with different options.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_MAX_SHOWN = 5


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shape_and_dtype(leaf: Any) -> tuple[tuple[int, ...], str]:
    """An array's (or array metadata's) shape and dtype; a Python number counts as
    the 0-d array jax makes of it (an int is int32, a float float32)."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), str(np.dtype(leaf.dtype))
    if isinstance(leaf, (bool, int, float, complex, np.number)):
        return (), str(jnp.asarray(leaf).dtype)
    raise ValueError(
        f"The restored optimizer state holds {leaf!r}, which is not an array; a "
        "state is a tree of arrays (or of their shape-and-dtype metadata)."
    )


def _layout(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    """Leaf path (field and key names only) -> (shape, dtype)."""
    # Orbax's checkpoint metadata wraps the tree: StepMetadata.item_metadata.tree.
    tree = getattr(tree, "item_metadata", tree)
    tree = getattr(tree, "tree", tree)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(_key_name(k) for k in path): _shape_and_dtype(leaf) for path, leaf in leaves}


def validate_state(state: Any, template: Any) -> Any:
    """Raises ``ValueError`` unless ``state`` has the layout of ``template``.

    Use it on a state restored from a checkpoint, with ``template =
    optimizer.init(params)`` for the optimizer you are about to use. It compares
    every leaf's path, shape and dtype, so it catches a checkpoint written with
    other options (centered or not, momentum or not, other state dtypes) instead
    of letting it restore silently. ``state`` may also be a checkpoint's
    metadata, such as ``orbax.checkpoint.StandardCheckpointer().metadata(path)``,
    which can be checked before anything is read.

    Args:
      state: the restored state (or a tree of objects with ``shape`` and ``dtype``).
      template: the state the optimizer would make, e.g. ``optimizer.init(params)``.

    Returns:
      ``state``, unchanged, when it matches.

    Example:
      >>> import jax.numpy as jnp
      >>> import rmsprop_jax
      >>> params = {"w": jnp.zeros(3)}
      >>> saved = rmsprop_jax.rmsprop(0.1).init(params)
      >>> template = rmsprop_jax.rmsprop(0.1, centered=True).init(params)
      >>> rmsprop_jax.validate_state(saved, template)
      Traceback (most recent call last):
      ...
      ValueError: The restored optimizer state does not match the optimizer: missing from the
      restored state: mu/w (shape (3,), float32). ...
    """
    got, want = _layout(state), _layout(template)
    problems = []
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    if missing:
        problems.append(
            "missing from the restored state: "
            + ", ".join(
                f"{'/'.join(p)} (shape {want[p][0]}, {want[p][1]})" for p in missing[:_MAX_SHOWN]
            )
        )
    if extra:
        problems.append(
            "not in the optimizer's state: " + ", ".join("/".join(p) for p in extra[:_MAX_SHOWN])
        )
    for path in want:
        if path in got and got[path] != want[path]:
            problems.append(
                f"{'/'.join(path)} is shape {got[path][0]} {got[path][1]} in the restored "
                f"state but shape {want[path][0]} {want[path][1]} in the optimizer's"
            )
            if len(problems) > _MAX_SHOWN:
                break
    if problems:
        raise ValueError(
            "The restored optimizer state does not match the optimizer: "
            + "; ".join(problems)
            + ". It was probably saved with different options (centered, momentum, "
            "state dtypes or split_complex)."
        )
    return state
