"""A private Redis-protocol server (valkey-server or redis-server) on a loopback port,
for tests and the benchmark. Memory only; stopped (and waited for) on exit."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from stepstream.errors import StackError
from stepstream.stack import find_redis_binary, free_port


class LocalRedis:
    """One server: optionally with a password, in cluster mode, or persisting to disk."""

    def __init__(
        self,
        port: int = 0,
        password: str | None = None,
        cluster: bool = False,
        persist: bool = False,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.cluster = cluster
        self.persist = persist
        self.cluster_port = free_port() if cluster else 0
        self.binary = find_redis_binary(binary)
        self._dir = tempfile.TemporaryDirectory(prefix="stepstream-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, with the password when there is one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> LocalRedis:
        """Start the server and wait until it accepts connections."""
        # persist: an fsync'ed append-only file, so a killed server restarts with its data
        # (outage tests); otherwise memory only.
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *aof,
            "--dir",
            self._dir.name,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            # An explicit bus port: the default (port + 10000) overflows for high free ports.
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(self.cluster_port),
                "--cluster-config-file",
                str(Path(self._dir.name) / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
        log = Path(self._dir.name) / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"{self.binary} exited at start-up: {log.read_text()[-500:]}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        self.stop()
        raise StackError(f"{self.binary} did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it. Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """Kill the server abruptly (an outage), keeping port and settings for restart."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        """Stop and remove the data folder."""
        self.stop()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
