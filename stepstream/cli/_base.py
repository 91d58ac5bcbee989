"""What every command group of the `stepstream` CLI shares: the Typer app, consoles, common
options, settings loading and `_guard`, which turns failures into one line and an exit code
(exit codes: see `stepstream.cli`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from stepstream.errors import StepstreamError

app = typer.Typer(
    help="Streaming telemetry for distributed model training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_ERROR = 1
EXIT_NO_STACK = 3
EXIT_INTERRUPTED = 130

T = TypeVar("T")

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Stack state folder (env STEPSTREAM_STATE_DIR).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
RedisUrl = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (env STEPSTREAM_REDIS_URL).")
]


# Set by the global --debug flag, and the settings the running command loaded (so a
# connection failure can name the URL it was about).
_context: dict[str, Any] = {"debug": False, "settings": None}


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of a failure, too.")
    ] = False,
) -> None:
    _context["debug"] = debug


def _overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _load(**overrides: Any) -> Any:
    """Settings of a command (flags > environment > local stack > defaults), remembered."""
    from stepstream.stack import load_settings

    settings = load_settings(**_overrides(**overrides))
    _context["settings"] = settings
    return settings


def _fail(exc: BaseException, message: str, code: int) -> typer.Exit:
    """Print the one-line error (and the traceback under --debug); the Exit to raise."""
    if _context["debug"]:
        traceback.print_exception(exc, file=sys.stderr)
    # Plain write, no rich: a console would wrap a long line into several.
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return typer.Exit(code)


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) while the block runs, instead of a KeyboardInterrupt
    that could land inside the Kafka client. The handler is installed even where SIGINT was
    inherited ignored (a command started with `&` from a script), so `kill -INT` stops it."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _guard(action: Callable[[], T]) -> T:
    """Run `action`, turning stepstream errors, and Redis and Kafka failures, into one line
    and a meaningful exit code."""
    try:
        return action()
    except StepstreamError as exc:
        raise _fail(exc, str(exc), exc.exit_code) from exc
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except KeyboardInterrupt as exc:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from exc
    except Exception as exc:
        from stepstream.failures import explain

        settings = _context["settings"]
        failure = explain(
            exc,
            settings.redis_url if settings is not None else None,
            settings.kafka_bootstrap if settings is not None else None,
        )
        if failure is None:
            raise
        raise _fail(exc, str(failure), failure.exit_code) from exc
