"""Serves MathJax from the built site instead of a CDN.

MathJax 3 comes from the ``sphinx-mathjax-offline`` package (in the ``docs``
extras); only the files the pages use are copied, into ``_static/mathjax``:
the TeX-to-HTML bundle, the TeX extensions it may load on demand, its menu and
accessibility modules, and its web fonts. The pages then render their
equations with no network at all.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError

BUNDLE = "tex-chtml.js"
PARTS = (BUNDLE, "input/tex/extensions", "output/chtml", "ui", "a11y")


def mathjax_source() -> str:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise ExtensionError(
            "MathJax is served locally from the `sphinx-mathjax-offline` package; "
            'install the documentation requirements: pip install -e ".[docs]".'
        )
    return os.path.join(os.path.dirname(spec.origin), "static", "mathjax")


def configure(app: Sphinx, config: Config) -> None:
    mathjax_source()  # fail early, before reading anything, if it is missing
    config.mathjax_path = f"mathjax/{BUNDLE}"  # relative: under _static/


def copy(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), os.path.join(app.outdir, "_static", "mathjax")
    for part in PARTS:
        src, dst = os.path.join(source, part), os.path.join(target, part)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", configure)
    app.connect("build-finished", copy)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
