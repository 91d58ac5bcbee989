"""The tree is the architecture: which top-level package may import which.

Contract modules in `stepstream/` import no stage (only the CLI composes stages); the
write path (`sinks/`) and the read path (`query/`) stay apart; the SDK (`producers/`)
never imports a worker. Checked on the source, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"producers", "processors", "sinks", "query"}

# package -> top-level project packages it may import (besides `stepstream`)
ALLOWED: dict[str, set[str]] = {
    "stepstream": set(),
    "stepstream/cli": STAGES,
    "producers": set(),
    "processors": set(),
    "sinks": set(),
    # the dashboard's silence action writes through the alerting stage's silence store
    "query": {"processors"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & STAGES


def _owner(path: Path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    return "stepstream/cli" if rel.startswith("stepstream/cli/") else rel.split("/")[0]


SOURCES = sorted(p for pkg in ("stepstream", *STAGES) for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_package_imports_only_what_the_layering_allows(path: Path) -> None:
    owner = _owner(path)
    own = owner.split("/")[0]
    forbidden = _imports(path) - ALLOWED[owner] - {own}
    assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_processor_silence_import_is_the_only_read_path_exception() -> None:
    offenders = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "query").rglob("*.py")
        if "processors" in _imports(p) and "processors.alerting.silence_store" not in p.read_text()
    }
    assert not offenders
