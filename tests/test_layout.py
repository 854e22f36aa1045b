"""How the test suite is laid out: a test module never imports another test module.

Shared code lives in helpers modules (tests/helpers.py, tests/study/helpers.py,
tests/mislas/reference_files.py, tests/mislas/hostile.py) or in conftest fixtures, so that
running or editing one test module never runs or breaks another's tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in _imported_modules(path):
            if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(TESTS.parent)} imports {name}")
    assert offenders == [], "move the shared code into a helpers module or conftest:\n" + "\n".join(offenders)


def test_the_rule_sees_an_import_of_a_test_module(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text("from tests.study.test_e2e import x\nimport tests.mislas.test_reference\n")
    assert _imported_modules(probe) == ["tests.study.test_e2e", "tests.mislas.test_reference"]
