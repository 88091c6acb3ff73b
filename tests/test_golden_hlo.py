"""The compiled update is exactly the recorded program, configuration by configuration.

A change that is meant to change the program regenerates the files with
``make golden`` in the same commit; any other change must leave them equal.
"""

import difflib

import golden_hlo
import pytest


def _recorded(name: str) -> tuple[str, str]:
    path = golden_hlo.GOLDEN_DIR / f"{name}.hlo"
    if not path.exists():
        pytest.fail(f"no golden file {path}; run `make golden`")
    first, _, body = path.read_text().partition("\n")
    return first.removeprefix("# "), body


@pytest.mark.parametrize("name", sorted(golden_hlo.CONFIGS))
def test_compiled_update_matches_golden_file(name):
    environment, want = _recorded(name)
    if environment != golden_hlo.environment():
        pytest.skip(
            f"golden HLO was recorded with {environment}; this is "
            f"{golden_hlo.environment()} (XLA's output differs between releases): "
            "compare on the recorded versions, or regenerate with `make golden`"
        )
    got = golden_hlo.compiled_update(name)
    if got != want:
        diff = "".join(
            difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now", n=2)
        )
        pytest.fail(f"the compiled update for {name!r} changed:\n{diff[:6000]}")


def test_every_golden_file_has_a_configuration():
    files = {p.stem for p in golden_hlo.GOLDEN_DIR.glob("*.hlo")}
    assert files == set(golden_hlo.CONFIGS)


def test_canonical_form_ignores_names_and_locations_only():
    a = (
        'HloModule jit_f, x\n\nFileNames\n1 "a.py"\n\n'
        "ENTRY %main.7 (p.3: f32[]) -> f32[] {\n"
        '  %p.3 = f32[] parameter(0), metadata={op_name="p" stack_frame_id=1}\n'
        "  ROOT %add.9 = f32[] add(%p.3, %p.3)\n}\n"
    )
    b = a.replace("add.9", "add.2").replace("main.7", "main.1").replace('"a.py"', '"b.py"')
    assert golden_hlo.canonical(a) == golden_hlo.canonical(b)
    c = a.replace("add(", "multiply(")
    assert golden_hlo.canonical(a) != golden_hlo.canonical(c)
