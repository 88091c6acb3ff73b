"""Fails the build when a public name of rmsprop_jax has no documentation entry.

The public names are ``rmsprop_jax.__all__``, ``rmsprop_jax.presets.__all__`` and
``rmsprop_jax.migrate.__all__``.
A name counts as documented when the Python domain holds an object (function,
class, data, module) under its full dotted name, which is what ``autofunction``,
``autoclass``, ``autodata``, ``automodule`` and the ``py:*`` directives record.
Entries marked ``:no-index:`` do not count.
"""

from __future__ import annotations

import importlib
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

# Modules whose `__all__` lists public names.
PUBLIC_MODULES = ("rmsprop_jax", "rmsprop_jax.presets", "rmsprop_jax.migrate")


def public_names() -> list[str]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [f"{module_name}.{name}" for name in module.__all__]
    return names


def documented_names(app: Sphinx) -> set[str]:
    domain: Any = app.env.get_domain("py")
    return set(domain.objects) | set(domain.modules)


def check(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None:  # the build failed already; say nothing more
        return
    missing = [name for name in public_names() if name not in documented_names(app)]
    if missing:
        # An error fails the build with or without -W (and, unlike an exception
        # raised here, reads as one line rather than as a crash of Sphinx).
        logger.error(
            "public names missing from the documentation: %s. Document each in "
            "docs/api/ (autofunction, autoclass, autodata or automodule).",
            ", ".join(missing),
            type="public_api",
        )
        app.statuscode = 1
        return
    logger.info("public API check: all %d public names are documented", len(public_names()))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("build-finished", check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
