"""The README as a newcomer meets it: its code runs, and its links lead somewhere."""

import contextlib
import io
import re

import numpy as np
import pytest
from helpers import ROOT

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# Markdown links and images whose target is a file of the repository.
LOCAL_LINKS = [
    target
    for target in re.findall(r"\]\(([^)\s]+)\)", README)
    if not re.match(r"[a-z]+://|#|mailto:", target)
]


def test_quickstart_runs_and_converges():
    quickstart = PYTHON_BLOCKS[0]
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(quickstart, "README quickstart", "exec"), namespace)
    lines = out.getvalue().splitlines()
    losses = [float(line.split()[-1]) for line in lines if line.startswith("step")]
    assert len(losses) == 4, lines
    assert losses[0] > 1 and losses[-1] < 1e-4, losses
    np.testing.assert_allclose(namespace["params"]["w"], [1.0, -2.0, 0.5], atol=0.01)
    np.testing.assert_allclose(namespace["params"]["b"], 0.3, atol=0.01)


def test_preset_block_builds_every_optimizer():
    block = PYTHON_BLOCKS[1]
    calls = [line.split("#")[0].strip() for line in block.splitlines() if "presets." in line]
    assert len(calls) == 4
    namespace: dict = {}
    exec(compile(block, "README presets", "exec"), namespace)
    for call in calls:
        opt = eval(call, namespace)
        assert callable(opt.init) and callable(opt.update), call


@pytest.mark.parametrize("target", sorted(set(LOCAL_LINKS)))
def test_local_link_exists(target):
    assert (ROOT / target.split("#")[0]).exists(), f"README links to missing {target}"


def test_every_example_is_listed():
    for script in sorted((ROOT / "examples").glob("*.py")):
        if script.name.startswith("_"):  # shared code of several examples
            continue
        assert f"`{script.name}`" in README, f"README's examples table omits {script.name}"


def test_long_description_has_no_relative_links():
    """The package index shows README.md after pyproject's substitutions: every
    link or image into the repository must have become text there."""
    import tomllib

    hook = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["metadata"]
    text = README
    for sub in hook["hooks"]["fancy-pypi-readme"]["substitutions"]:
        text = re.sub(sub["pattern"], sub["replacement"], text)
    left = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://", t)]
    assert not left, f"relative links left in the long description: {left}"
    assert "`docs/migrating.md`" in text and "https://github.com/google-deepmind/optax" in text
