"""The README's demo command, run as a user would, leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import psutil


def _servers() -> set[int]:
    names = ("tansu", "valkey-server", "redis-server")
    return {p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith(names)}


def test_demo_prints_the_nan_alert_and_both_ranks_then_exits_clean() -> None:
    before = _servers()
    proc = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "demo", "--steps", "40", "--nan-step", "25"],
        capture_output=True, text=True, timeout=240, env={"COLUMNS": "120", **_env()},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "loss is NaN on rank 1 of run demo-" in out and "at step 25" in out
    assert "window 50steps" in out
    table_lines = [line for line in out.splitlines() if "│ loss" in line]
    ranks = {line.split("│")[1].strip() for line in table_lines}
    assert ranks == {"0", "1"}
    assert "demo ok" in out
    assert _servers() - before == set()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
