"""Shutdown and crash hooks: SIGTERM flushes, uncaught exceptions ship their traceback.

Every hook chains to the one it replaced, and is removed again only if it is still the
installed one (another library may have wrapped it since).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)


def format_traceback(
    exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
) -> str:
    """The traceback as Python would print it."""
    return "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()


class CrashHooks:
    """sys.excepthook, threading.excepthook and (from the main thread only) SIGTERM.

    `on_crash(text, fatal)` is told about an uncaught exception (fatal: it ends the
    process); `flush(timeout)` runs before the process goes down.
    """

    def __init__(
        self,
        on_crash: Callable[[str, bool], None],
        flush: Callable[[float], object],
        timeout: float,
    ) -> None:
        self._on_crash = on_crash
        self._flush = flush
        self._timeout = timeout
        self._prev_excepthook: Callable[..., Any] | None = None
        self._prev_thread_hook: Callable[..., Any] | None = None
        self._prev_sigterm: Any = None
        self._sigterm_installed = False

    def install(self, excepthooks: bool = True, sigterm: bool = True) -> None:
        """Install the hooks; SIGTERM only when called from the main thread."""
        if excepthooks:
            self._prev_excepthook = sys.excepthook
            sys.excepthook = self._excepthook
            self._prev_thread_hook = threading.excepthook
            threading.excepthook = self._thread_hook
        if sigterm and threading.current_thread() is threading.main_thread():
            try:
                self._prev_sigterm = signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm_installed = True
            except (ValueError, OSError) as exc:  # embedded interpreters may refuse
                log.debug("stepstream: SIGTERM handler not installed: %s", exc)

    def uninstall(self) -> None:
        """Put back what install() replaced, where ours is still the one installed."""
        if self._prev_excepthook is not None and sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_excepthook
        if self._prev_thread_hook is not None and threading.excepthook == self._thread_hook:
            threading.excepthook = self._prev_thread_hook
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(signal.SIGTERM) == self._sigterm:
                    signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._sigterm_installed = False

    def _excepthook(
        self,
        exc_type: type[BaseException],
        exc: BaseException,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._on_crash(format_traceback(exc_type, exc, tb), True)
            self._flush(self._timeout)
        except Exception as err:
            log.debug("stepstream: shipping the crash failed: %s", err)
        (self._prev_excepthook or sys.__excepthook__)(exc_type, exc, tb)

    def _thread_hook(self, args: threading.ExceptHookArgs) -> None:
        try:
            name = args.thread.name if args.thread is not None else "?"
            text = format_traceback(args.exc_type, args.exc_value, args.exc_traceback)
            self._on_crash(f"in thread {name}:\n{text}", False)
        except Exception as err:
            log.debug("stepstream: shipping a thread crash failed: %s", err)
        (self._prev_thread_hook or threading.__excepthook__)(args)

    def _sigterm(self, signum: int, frame: FrameType | None) -> None:
        try:
            self._flush(self._timeout)
        except Exception as err:
            log.debug("stepstream: flush on SIGTERM failed: %s", err)
        prev = self._prev_sigterm
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:  # SIG_DFL (or unknown): die by the signal, as without us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
