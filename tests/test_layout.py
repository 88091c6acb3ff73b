"""The test suite's own layout: shared code lives in helpers, not in test modules."""

import ast
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parent


def imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path", sorted(TESTS.rglob("test_*.py")), ids=lambda p: str(p.relative_to(TESTS))
)
def test_no_test_module_imports_another(path):
    others = {p.stem for p in TESTS.rglob("test_*.py")}
    crossing = imported_modules(path) & others
    assert not crossing, (
        f"{path.name} imports test modules {sorted(crossing)}; move the code to helpers.py"
    )
