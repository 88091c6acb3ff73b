"""What the converters of other frameworks' RMSprop state share.

An original keeps its parameters in a flat list (PyTorch's parameter groups one
after another, Keras' trainable variables, a TensorFlow 1 variable list); JAX
keeps a pytree. Here the list is matched to the tree's leaves (``order``), each
original array is brought into the leaf's layout (``layout``), checked against
the state the matching preset's ``init`` makes, and stored in that state's
dtype and sharding. The way back reads the same leaves out of a state.

Every mismatch is a ``ValueError`` that names the parameter on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rmsprop_jax import _trees
from rmsprop_jax._core import RMSpropState
from rmsprop_jax._factored import is_factored

Layout = Mapping[str, Callable[[np.ndarray], np.ndarray]]

_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------
# Leaves and their names.


class Leaves:
    """The leaves of a parameter-shaped tree, with the two spellings of each
    leaf's path that ``order`` and ``layout`` accept: ``jax.tree_util.keystr``'s
    (``"['hidden']['kernel']"``) and the simple one (``"hidden/kernel"``)."""

    def __init__(self, tree: Any, is_leaf: Callable[[Any], bool] | None = None):
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
        self.treedef: Any = treedef
        self.values = [x for _, x in flat]
        self.names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat]
        self.index: dict[str, int] = {}
        for i, (path, _) in enumerate(flat):
            self.index[jax.tree_util.keystr(path)] = i
            self.index[self.names[i]] = i

    def __len__(self) -> int:
        return len(self.values)

    def name(self, i: int) -> str:
        return self.names[i] or "the root"

    def find(self, path: Any, argument: str) -> int:
        """The leaf that ``path`` names; ValueError listing the leaves otherwise."""
        if not isinstance(path, str) or path not in self.index:
            shown = ", ".join(repr(n) for n in self.names[:8])
            more = f" and {len(self.names) - 8} more" if len(self.names) > 8 else ""
            raise ValueError(
                f"`{argument}` names {path!r}, which is not a leaf of `params`; its leaves "
                f"are {shown}{more} (or the same in `jax.tree_util.keystr` form)."
            )
        return self.index[path]


def arrange(leaves: Leaves, order: Sequence[str] | None, count: int, original: str) -> list[int]:
    """For each of the original's ``count`` parameters, in its order, the index of
    its leaf. Without ``order`` the leaves are taken in ``jax.tree.leaves`` order."""
    if order is None:
        if count != len(leaves):
            raise ValueError(
                f"{original} has {count} parameters, but `params` has {len(leaves)} leaves. "
                "Pass the parameters it optimizes (all of them, or one parameter group "
                "with `group=`)."
            )
        return list(range(count))
    if isinstance(order, str) or not isinstance(order, Sequence):
        raise ValueError(
            f"`order` must be a sequence of leaf paths of `params`, one for each of "
            f"{original}'s parameters in its order; got {order!r}."
        )
    positions = [leaves.find(path, "order") for path in order]
    if len(positions) != count:
        raise ValueError(
            f"`order` names {len(positions)} leaves, but {original} has {count} parameters."
        )
    if len(set(positions)) != len(positions):
        twice = next(p for p in positions if positions.count(p) > 1)
        raise ValueError(f"`order` names the leaf {leaves.name(twice)!r} more than once.")
    if len(positions) != len(leaves):
        missing = next(i for i in range(len(leaves)) if i not in positions)
        raise ValueError(
            f"`order` does not name the leaf {leaves.name(missing)!r} of `params`: every "
            f"leaf must be one of {original}'s parameters."
        )
    return positions


def layouts(leaves: Leaves, layout: Layout | None) -> list[Callable[[Any], Any] | None]:
    """Each leaf's layout function, or None where the layouts agree."""
    found: list[Callable[[Any], Any] | None] = [None] * len(leaves)
    if layout is None:
        return found
    if not isinstance(layout, Mapping):
        raise ValueError(
            "`layout` must be a mapping from leaf paths of `params` to functions of an "
            f"array, got {layout!r}."
        )
    for path, fn in layout.items():
        if not callable(fn):
            raise ValueError(f"`layout[{path!r}]` must be a function of an array, got {fn!r}.")
        found[leaves.find(path, "layout")] = fn
    return found


# --------------------------------------------------------------------------
# The RMSpropState inside a state, and the count.


def find_state(state: Any) -> tuple[RMSpropState, Callable[[RMSpropState], Any]]:
    """The one :class:`RMSpropState` in ``state`` (itself, or inside a chain's
    tuple), and a function that puts another in its place."""
    is_rms = lambda x: isinstance(x, RMSpropState)
    flat, treedef = _trees.flatten_with(state, is_rms)
    hits = [i for i, x in enumerate(flat) if is_rms(x)]
    if len(hits) != 1:
        raise ValueError(
            f"`state` must hold exactly one RMSpropState (the state of an rmsprop_jax "
            f"preset, alone or in a chain); it holds {len(hits)}."
        )

    def replace(new: RMSpropState) -> Any:
        return treedef.unflatten([new if i == hits[0] else x for i, x in enumerate(flat)])

    return flat[hits[0]], replace


def check_count(count: Any, what: str) -> int:
    """A step count as the state stores it: an integer in [0, 2**31 - 1]."""
    value = float(np.asarray(count))
    if not (value.is_integer() and 0 <= value <= _INT32_MAX):
        raise ValueError(
            f"{what} must be a whole number of steps in [0, {_INT32_MAX}], got {count!r}."
        )
    return int(value)


# --------------------------------------------------------------------------
# From the original's arrays to a state, and back.


def to_state_layout(x: Any, fn: Callable[[Any], Any] | None, split: bool) -> np.ndarray:
    """An original's array in the parameter's layout; with ``split``, complex
    values split into a trailing (real, imaginary) axis, as ``split_complex``
    stores them."""
    x = np.asarray(x)
    if fn is not None:
        x = np.asarray(fn(x))
    if split and np.iscomplexobj(x):
        x = np.stack([x.real, x.imag], axis=-1)
    return x


def join_complex(x: np.ndarray) -> np.ndarray:
    """A trailing (real, imaginary) axis joined into complex values."""
    return x[..., 0] + 1j * x[..., 1]


def fill(
    template: RMSpropState,
    leaves: Leaves,
    fields: Mapping[str, Sequence[Any]],
    count: int,
    describe: Callable[[str, int], str],
) -> RMSpropState:
    """``template`` with the given leaves of ``nu``, ``mu`` and ``trace`` replaced.

    ``fields[name][j]`` is the array for leaf ``j`` (None keeps the template's,
    which is what ``init`` gives: a parameter the original never stepped). Each
    array must have the template leaf's shape; it is stored in its dtype and
    with its sharding. ``describe(name, j)`` says where an array came from."""
    new: dict[str, Any] = {}
    for name in ("nu", "mu", "trace"):
        tree = getattr(template, name)
        if tree is None:
            new[name] = None
            continue
        targets = leaves.treedef.flatten_up_to(tree)
        out = []
        for j, (target, value) in enumerate(zip(targets, fields[name], strict=True)):
            if value is None:
                out.append(target)
                continue
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{describe(name, j)} has shape {tuple(value.shape)}, but the state of "
                    f"the parameter at {leaves.name(j)!r} needs {tuple(target.shape)}. If "
                    "the parameters are in another order, pass `order`; if this one is "
                    "laid out differently (a transposed kernel), pass `layout`."
                )
            out.append(jax.device_put(np.asarray(value, dtype=target.dtype), target.sharding))
        new[name] = leaves.treedef.unflatten(out)
    return RMSpropState(
        count=jax.device_put(np.asarray(count, np.int32), template.count.sharding),
        nu=new["nu"],
        mu=new["mu"],
        trace=new["trace"],
    )


def state_leaves(state: RMSpropState) -> tuple[Leaves, dict[str, list[np.ndarray] | None]]:
    """The leaves of a state's ``nu``, ``mu`` and ``trace`` (None for an absent
    field) as NumPy arrays, and the parameter leaves they belong to."""
    leaves = Leaves(state.nu, is_leaf=is_factored)
    for i, x in enumerate(leaves.values):
        if is_factored(x):
            raise ValueError(
                f"The second moment of the parameter at {leaves.name(i)!r} is factored "
                "(`factored=True`), which the original has no form for: move a state "
                "made without `factored`."
            )
    fields: dict[str, list[np.ndarray] | None] = {}
    for name in ("nu", "mu", "trace"):
        tree = getattr(state, name)
        fields[name] = (
            None if tree is None else [np.asarray(x) for x in leaves.treedef.flatten_up_to(tree)]
        )
    return leaves, fields
