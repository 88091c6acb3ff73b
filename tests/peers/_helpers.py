"""Small utilities shared by the ported peer tests (not a test module)."""

from __future__ import annotations

import jax
import numpy as np
import optax


def as_float64(x) -> np.ndarray:
    """A leaf as float64 (complex128 for complex leaves) NumPy, for comparisons."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def assert_trees_close(got, want, rtol: float, atol: float = 0.0, what: str = "") -> None:
    """Same structure, and every leaf close to the other's in float64."""
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def, f"{what}: structures differ: {got_def} vs {want_def}"
    for i, (a, b) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        np.testing.assert_allclose(
            as_float64(a), as_float64(b), rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}"
        )


def state_field(state, name: str):
    """The one ``name`` field (``count``, ``nu``, ``mu``, ``trace``) anywhere in a state:
    None where there is none, KeyError where there are several."""
    return optax.tree_utils.tree_get(state, name)


def types_of(tree):
    """Shape, dtype and sharding of every leaf, as ``jax.typeof`` reports them."""
    return jax.tree.map(jax.typeof, tree)
