"""The oldest JAX, jaxlib and Optax this library runs on, checked at import.

These are the lower bounds in ``pyproject.toml`` (a test keeps the two equal):
the versions ``make test-min`` runs the whole test suite on. Older releases
lack APIs the library or its tests call (``jax.typeof``, ``jax.enable_x64``,
``optax.tree``) or behave differently where it matters (before optax 0.2.8,
``optax.inject_hyperparams`` held hyperparameters in the dtype of the first
parameter leaf: a bfloat16 learning rate, an integer decay). An environment
can still hold one (``pip install --no-deps``, a pinned image); importing then
fails here, naming the versions, instead of training on untested ground.
"""

from __future__ import annotations

import re

import jax
import jaxlib
import optax

MINIMUM = {"jax": (0, 8, 0), "jaxlib": (0, 8, 0), "optax": (0, 2, 8)}


def parse(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: '0.8.0.dev20250101' -> (0, 8, 0)."""
    m = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in m.group(0).split(".")) if m else ()


def too_old(found: dict[str, str]) -> list[str]:
    """'name found (needs >= minimum)' for each package older than its minimum."""
    return [
        f"{name} {version} (needs >= {'.'.join(map(str, MINIMUM[name]))})"
        for name, version in found.items()
        if parse(version) < MINIMUM[name]
    ]


def check(found: dict[str, str] | None = None) -> None:
    """Raises ImportError naming every package older than the supported minimum."""
    if found is None:
        found = {
            "jax": jax.__version__,
            "jaxlib": getattr(jaxlib, "__version__", "0"),
            "optax": optax.__version__,
        }
    old = too_old(found)
    if old:
        want = " ".join(f"'{name}>={'.'.join(map(str, v))}'" for name, v in MINIMUM.items())
        raise ImportError(
            f"rmsprop_jax needs newer packages than this environment has: {', '.join(old)}. "
            f"Older releases are not supported (some lack APIs it calls; none were tested). "
            f"Upgrade with: pip install --upgrade {want}"
        )


check()
