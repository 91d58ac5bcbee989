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


# -- one faust seam (issue 24) -----------------------------------------------------------

SEAM = ROOT / "stepstream" / "faust_seam.py"
#: Everything that runs in or beside a worker, the benches and scripts included.
ALL_SOURCES = sorted(
    p
    for pkg in ("stepstream", *STAGES, "bench", "scripts")
    for p in (ROOT / pkg).rglob("*.py")
    if p != SEAM
)


def _library_private_names() -> set[str]:
    """Private attribute names of faust's, mode's and aiokafka's classes a worker meets."""
    import inspect

    import aiokafka
    import faust.agents
    import faust.app
    import faust.streams
    import faust.transport.consumer
    import faust.transport.drivers.aiokafka
    import faust.worker

    names: set[str] = set()
    modules = (
        aiokafka,
        faust.agents,
        faust.app,
        faust.streams,
        faust.transport.consumer,
        faust.transport.drivers.aiokafka,
        faust.worker,
    )
    for module in modules:
        for obj in vars(module).values():
            if not inspect.isclass(obj):
                continue
            for klass in obj.__mro__:
                if klass.__module__.split(".")[0] not in {"faust", "mode", "aiokafka"}:
                    continue
                for name in (*vars(klass), *getattr(klass, "__annotations__", {})):
                    if name.startswith("_") and not name.startswith("__"):
                        names.add(name)
    return names


def test_only_the_faust_seam_imports_aiokafka_or_touches_faust_internals() -> None:
    private = _library_private_names()
    assert {"_read_offset", "_committed_offset", "_acked"} <= private
    offenders: list[str] = []
    for path in ALL_SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
                offenders += [
                    f"{rel}:{node.lineno} imports {m}" for m in modules if "aiokafka" in m
                ]
            elif isinstance(node, ast.ImportFrom) and "aiokafka" in (node.module or ""):
                offenders.append(f"{rel}:{node.lineno} imports {node.module}")
            if not isinstance(node, ast.Attribute):
                continue
            own = isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            if node.attr in private and not own:
                offenders.append(f"{rel}:{node.lineno} touches .{node.attr}")
            if node.attr in {"take_events", "noack"}:  # the seam runs every agent loop
                offenders.append(f"{rel}:{node.lineno} calls .{node.attr}")
    assert offenders == []


def test_the_seam_lists_each_private_attribute_it_touches() -> None:
    from stepstream.faust_seam import INTERNALS

    listed = {internal.name for internal in INTERNALS}
    touched = {
        node.attr
        for node in ast.walk(ast.parse(SEAM.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in _library_private_names()
        and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
    }
    assert touched and touched <= listed
