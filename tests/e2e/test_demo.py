"""The README's demo command, run as a user would, leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


def test_demo_prints_the_nan_alert_and_both_ranks_then_exits_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "demo", "--steps", "40", "--nan-step", "25"],
        capture_output=True,
        text=True,
        timeout=240,
        env={"COLUMNS": "120", **_env()},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "loss is NaN on rank 1 of run demo-" in out and "at step 25" in out
    assert "window 50steps" in out
    table_lines = [line for line in out.splitlines() if "│ loss" in line]
    ranks = {line.split("│")[1].strip() for line in table_lines}
    assert ranks == {"0", "1"}
    assert "demo ok" in out
    # Whatever the demo started must be gone: nothing listens on its ports any more.
    ports = [int(p) for p in re.findall(r"on 127\.0\.0\.1:(\d+)", out)]
    assert len(ports) == 2
    assert not any(_listening(port) for port in ports)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
