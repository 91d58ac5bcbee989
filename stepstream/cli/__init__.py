"""The `stepstream` command line: local stack, workers, queries and the demo.

Exit codes: 0 success, 1 a stepstream error (the message says what to do), 2 bad usage,
3 no running stack where one is needed, 4 Redis or Kafka unreachable, 5 credentials or
permissions refused, 6 TLS handshake failed, 130 interrupted. Failures print one line;
``--debug`` (before the command) prints the traceback too.

The commands live in one module per group (stack, query, alerts, serve, export); they
register on the one Typer app of `stepstream.cli._base`, which this package re-exports.
"""

from __future__ import annotations

import sys

from stepstream.cli import alerts, export, query, serve, stack
from stepstream.cli._base import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO_STACK,
    _context,
    _fail,
    _guard,
    _load,
    app,
    console,
    err_console,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_STACK",
    "_context",
    "_fail",
    "_guard",
    "_load",
    "alerts",
    "app",
    "console",
    "err_console",
    "export",
    "main",
    "query",
    "serve",
    "stack",
]

# Help lists commands in the order they were written in one module before the split.
_ORDER = [
    "up",
    "down",
    "status",
    "query",
    "models",
    "serve",
    "export",
    "worker",
    "alerts",
    "schema",
    "demo",
]
_GROUPS = ["silence", "redis", "rules"]
app.registered_commands.sort(
    key=lambda c: _ORDER.index(str(c.name or getattr(c.callback, "__name__", "")))
)
app.registered_groups.sort(key=lambda g: _GROUPS.index(g.name or ""))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(app())
