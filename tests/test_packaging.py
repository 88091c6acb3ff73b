"""Packaging facts that must not drift apart: the declared minimums, the import-time
version guard, the version number in every file that states it, and torch kept
out of every extra but its own (PyPI's Linux build of torch is the CUDA one)."""

import importlib.util
import pathlib
import re
import tomllib

import pytest

import rmsprop_jax
from rmsprop_jax import _versions

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_minimums_are_the_declared_minimums():
    pins = dict(pin.split("==") for pin in _load_tool("minimums").minimums())
    for name, version in _versions.MINIMUM.items():
        assert pins[name] == ".".join(map(str, version)), name


def test_guard_refuses_older_packages_by_name():
    with pytest.raises(ImportError, match=r"jax 0\.7\.2 \(needs >= 0\.8\.0\).*optax 0\.2\.4"):
        _versions.check({"jax": "0.7.2", "jaxlib": "0.8.0", "optax": "0.2.4"})
    _versions.check({"jax": "0.8.0", "jaxlib": "0.8.0", "optax": "0.2.8"})
    _versions.check({"jax": "0.10.0.dev20260101", "jaxlib": "0.10.0", "optax": "0.2.8"})


@pytest.mark.parametrize(
    ("version", "parsed"),
    [("0.8.0", (0, 8, 0)), ("0.9.0.1", (0, 9, 0, 1)), ("0.10.0.dev20260101", (0, 10, 0))],
)
def test_version_parsing(version, parsed):
    assert _versions.parse(version) == parsed


def test_the_version_is_the_same_everywhere():
    version = rmsprop_jax.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[?([0-9.]+)", changelog, re.M).group(1) == version
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: ['\"]?([0-9.]+)", citation, re.M).group(1) == version


def test_only_the_torch_extra_names_torch():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name, requirements in extras.items():
        has_torch = any(re.match(r"torch\b(?!-)", r) for r in requirements)
        assert has_torch == (name == "torch"), name
