"""Root fixtures: every test must leave no child process and no stray thread behind."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest


def _live_children() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


# Threads that libraries keep for the life of the interpreter, not leaks of a test.
_ALLOWED_THREAD_PREFIXES = ("pytest_timeout", "ThreadPoolExecutor", "asyncio_")


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves child processes or new non-daemon-library threads running."""
    if "allow_leaks" in request.keywords:
        yield
        return
    threads_before = set(threading.enumerate())
    children_before = {c.pid for c in _live_children()}  # module fixtures' servers
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = [c for c in _live_children() if c.pid not in children_before]
        threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before
            and t.is_alive()
            and not t.name.startswith(_ALLOWED_THREAD_PREFIXES)
        ]
        if not children and not threads:
            return
        time.sleep(0.1)
    for child in children:
        child.kill()
    names = [f"{c.pid}:{c.name()}" for c in children]
    pytest.fail(f"test leaked processes {names} and threads {[t.name for t in threads]}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A SIGTERM (a CI timeout, `timeout`) ends the run like Ctrl-C, so fixtures still
    stop the brokers, Redis servers and workers they started."""
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any child process outlived every fixture (kills it first)."""
    leftovers = _live_children()
    if leftovers:
        for child in leftovers:
            child.kill()
        names = [f"{c.pid}:{c.name()}" for c in leftovers]
        session.config.get_terminal_writer().line(f"leaked processes at session end: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
