"""Pytree plumbing: describing parameter leaves, making state like them, and
matching gradients, state and parameters, with errors that name both sides.

Parameter leaves may be jax or NumPy arrays, Python numbers (0-d arrays),
``jax.ShapeDtypeStruct`` (abstract initialisation) or tracers. State is made
*like* each parameter, so that it carries the parameter's sharding: eagerly,
under ``jit`` with explicit mesh axes, and from a ``ShapeDtypeStruct`` that
names one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rmsprop_jax import _validation as v

Array = jax.Array


def flatten(tree: Any) -> tuple[list[Any], Any]:
    """``jax.tree.flatten``, with the treedef typed loosely (jaxlib ships no stubs)."""
    return jax.tree.flatten(tree)


def flatten_with(tree: Any, is_leaf: Any) -> tuple[list[Any], Any]:
    """``jax.tree.flatten`` with an ``is_leaf``, the treedef typed loosely."""
    return jax.tree.flatten(tree, is_leaf=is_leaf)


def paths(tree: Any) -> list[str]:
    """Each leaf's path, as ``jax.tree_util.keystr`` writes it."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# --------------------------------------------------------------------------
# Parameter leaves.


def shape_and_dtype(x: Any) -> tuple[tuple[int, ...], Any]:
    """The shape and dtype of an array, tracer, ShapeDtypeStruct or Python number
    (a Python float is a 0-d float32 array, as ``jnp.asarray`` makes it). A PRNG
    key array's dtype is its key type, which is not a NumPy dtype."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return tuple(x.shape), x.dtype
    return (), jnp.result_type(x)


def check_leaf(path: str, x: Any, what: str = "parameter") -> None:
    """A leaf the optimizer can hold state for: an array (or tracer, or
    ``ShapeDtypeStruct``) of numbers, booleans, PRNG keys or ``float0``, or a
    Python number. Anything else (a string, an object) is refused, naming the
    leaf."""
    dtype = None
    try:
        dtype = shape_and_dtype(x)[1]
        ok = jax.dtypes.issubdtype(dtype, jax.dtypes.extended) or dtype == jax.dtypes.float0
        ok = ok or jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"The {what} at {path or 'the root'} is {x!r}"
            + (f" (dtype {dtype})" if dtype is not None else "")
            + ", which is not an array of numbers: a parameter tree holds arrays (or "
            "Python numbers). Keep other objects out of the tree the optimizer sees."
        )


def is_trained(dtype: Any) -> bool:
    """Floating and complex leaves are trained; integer, boolean and other
    leaves (``float0`` gradients, PRNG keys) are passed through with a zero
    update."""
    if jax.dtypes.issubdtype(dtype, jax.dtypes.extended):  # PRNG keys
        return False
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def named_sharding(x: Any) -> NamedSharding | None:
    """``x``'s NamedSharding where it has one the state can copy: a concrete
    array's or a ShapeDtypeStruct's, or a tracer's under explicit mesh axes."""
    if v.is_traced(x):
        sharding = getattr(jax.typeof(x), "sharding", None)
        if isinstance(sharding, NamedSharding) and any(
            entry is not None for entry in sharding.spec
        ):
            return sharding
        return None
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def full_like(x: Any, value: Any, dtype: jnp.dtype, reduced_axis: int | None = None) -> Array:
    """An array shaped like ``x`` (with ``reduced_axis`` of size 1, if given) filled
    with ``value``, carrying ``x``'s sharding (the reduced axis not sharded)."""
    shape, _ = shape_and_dtype(x)
    sharding = named_sharding(x)
    if reduced_axis is None and isinstance(x, (jax.Array, np.ndarray)) and is_trained(x.dtype):
        return jnp.full_like(x, value, dtype=dtype)
    if reduced_axis is not None:
        shape = (*shape[:reduced_axis], 1, *shape[reduced_axis + 1 :])
    if sharding is None:
        return jnp.full(shape, value, dtype)
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    if reduced_axis is not None:
        spec[reduced_axis] = None
    return jnp.full(shape, value, dtype, device=NamedSharding(sharding.mesh, PartitionSpec(*spec)))


def full(shape: tuple[int, ...], value: Any, dtype: jnp.dtype, sharding: Any) -> Array:
    """An array of ``shape`` filled with ``value``, with ``sharding`` (None: the default)."""
    if sharding is None:
        return jnp.full(shape, value, dtype)
    return jnp.full(shape, value, dtype, device=sharding)


def split_complex_like(x: Any, dtype: jnp.dtype) -> Any:
    """A stand-in for a complex leaf whose real and imaginary parts are kept side
    by side (shape (..., 2)), sharded like ``x`` on its own axes."""
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding if isinstance(x.sharding, NamedSharding) else None
        if sharding is not None:
            spec = list(sharding.spec) + [None] * (len(x.shape) + 1 - len(sharding.spec))
            sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec))
        return jax.ShapeDtypeStruct((*x.shape, 2), dtype, sharding=sharding)
    x = jnp.asarray(x)
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


# --------------------------------------------------------------------------
# Matching gradients to the state and the parameters.


def _mismatch(what: str, grads_def: Any, other: Any, detail: str = "") -> ValueError:
    return ValueError(
        f"The gradients do not match the {what}: the gradients have structure "
        f"{grads_def}, the {what} {jax.tree.structure(other)}"
        + (f" ({detail})" if detail else "")
        + ". Call `init` with parameters shaped like the gradients, and pass "
        "`update` gradients (and params) of that same structure."
    )


def match(treedef: Any, tree: Any, what: str) -> list[Any]:
    """``tree`` cut into one subtree per gradient leaf; ValueError naming both
    structures where ``tree`` is not shaped like the gradients."""
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise _mismatch(what, treedef, tree) from None


def check_param(path: str, p: Any, shape: tuple[int, ...]) -> None:
    """A parameter leaf that weight decay reads must be an array of the gradient's shape."""
    if p is None or not (hasattr(p, "shape") or isinstance(p, (int, float, complex))):
        raise ValueError(
            f"`params` must hold an array at {path or 'the root'}, where the gradient has "
            f"shape {shape}; got {p!r}. Pass the parameters the gradients were taken of."
        )
    if shape_and_dtype(p)[0] != shape:
        raise ValueError(
            f"`params` at {path or 'the root'} has shape {shape_and_dtype(p)[0]}, but the "
            f"gradient there has shape {shape}."
        )
