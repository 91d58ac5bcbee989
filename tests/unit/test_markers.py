"""Every live test (tests/integration, tests/e2e: real broker, Redis, workers) carries the
`integration` marker, so `-m "not integration"` selects exactly the tests that need
nothing running. Checked on the source: importing those modules would start nothing,
but costs their heavy imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIVE = sorted(
    [
        *(ROOT / "tests" / "integration").glob("test_*.py"),
        *(ROOT / "tests" / "e2e").glob("test_*.py"),
    ]
)


def _module_marks(path: Path) -> str:
    """The source of the module-level `pytestmark` assignment, or "" without one."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return ast.unparse(node.value)
    return ""


def test_there_are_live_test_modules() -> None:
    assert len(LIVE) > 20


@pytest.mark.parametrize("path", LIVE, ids=lambda p: str(p.relative_to(ROOT)))
def test_live_test_modules_carry_the_integration_marker(path: Path) -> None:
    marks = _module_marks(path)
    assert "pytest.mark.integration" in marks, (
        f"{path.relative_to(ROOT)}: add `pytestmark = pytest.mark.integration` after the imports"
    )
