"""Print the declared minimum of every runtime dependency as a pip constraint.

``make test-min`` installs exactly these (``jax>=0.8.0`` in pyproject.toml
becomes ``jax==0.8.0``) and runs the test suite on them, so the lower bounds
in ``[project] dependencies`` are the versions the suite was shown to pass on.
A dependency without a ``>=`` lower bound is an error: it would leave the
minimum untested.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def minimums(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][A-Za-z0-9.]*)\s*(,.*)?", dep)
        if m is None:
            raise SystemExit(f"minimums.py: {dep!r} has no `>=` lower bound to test")
        pins.append(f"{m.group(1)}=={m.group(2)}")
    return pins


if __name__ == "__main__":
    sys.stdout.write("".join(f"{pin}\n" for pin in minimums()))
