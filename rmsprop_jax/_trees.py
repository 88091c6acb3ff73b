"""Pytree plumbing shared by the modules: flattening with a loosely typed treedef."""

from __future__ import annotations

from typing import Any

import jax


def flatten(tree: Any) -> tuple[list[Any], Any]:
    """``jax.tree.flatten``, with the treedef typed loosely (jaxlib ships no stubs)."""
    return jax.tree.flatten(tree)
