"""Sphinx configuration for the rmsprop_jax documentation (`make docs`).

The site is built offline with warnings as errors: no intersphinx, MathJax
served from the build itself, and every public name checked to be documented.
"""

from __future__ import annotations

import doctest
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Document the package of this checkout, and load the local extensions.
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

from sphinx.util.inspect import TypeAliasForwardRef  # noqa: E402

import rmsprop_jax  # noqa: E402

project = "rmsprop_jax"
author = "the rmsprop_jax authors"
copyright = "2026, the rmsprop_jax authors"
version = release = rmsprop_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "myst_parser",
    "sphinx_copybutton",
    # local, in _ext/
    "local_mathjax",
    "public_api_check",
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
nitpicky = False  # optax and jax names cannot be linked without intersphinx
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

# -- MyST ---------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- autodoc / napoleon --------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# With `from __future__ import annotations` the annotations are strings: show
# the public aliases as written rather than their expanded unions.
autodoc_type_aliases = {
    name: name
    for name in (
        "jax.typing.ArrayLike",
        "jax.typing.DTypeLike",
        "optax.ScalarOrSchedule",
        "optax.Params",
        "optax.Updates",
        "optax.GradientTransformation",
        "optax.GradientTransformationExtraArgs",
    )
}
# Sphinx 9.0 prints an alias inside a union (`jax.typing.DTypeLike | None`) as
# the repr of its placeholder object; make that repr the alias itself.
TypeAliasForwardRef.__repr__ = lambda self: self.name  # type: ignore[method-assign]

autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- doctest (the `-b doctest` run of `make docs`) -----------------------------
doctest_global_setup = """
import jax
import jax.numpy as jnp
import optax
import rmsprop_jax
"""
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# -- HTML ----------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"rmsprop_jax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    # One search field, the sidebar's; none in the top bar as well.
    "navbar_persistent": [],
}
html_show_sourcelink = False
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
