"""TLS in front of a plain local server, for tests: the bundled valkey-server is built
without TLS, so `rediss://` clients talk to this proxy, which relays bytes to it.

Certificates come from a CA made at test time with the openssl CLI (`make_pki`), so no
Python crypto package is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """A CA and certificates it signed, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_host_cert: Path
    """Signed by the CA, but for 127.0.0.2 only: hostname checks must refuse it."""
    wrong_host_key: Path


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=folder, capture_output=True, timeout=60, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _sign(folder: Path, name: str, usage: str, san: str | None) -> tuple[Path, Path]:
    """A key and a certificate for `name`, signed by the CA in `folder`."""
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if san:
        extensions.append(f"subjectAltName={san}")
    (folder / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    # The CN only names the certificate: hostname checks read the SAN.
    _openssl(
        folder,
        "req",
        "-new",
        *_EC_KEY,
        "-subj",
        f"/CN=stepstream-test-{name}",
        *f"-keyout {name}.key -out {name}.csr".split(),
    )
    _openssl(
        folder,
        *f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -days 2".split(),
        "-set_serial",
        str(secrets.randbits(63)),
        *f"-extfile {name}.ext -out {name}.pem".split(),
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_pki(folder: Path) -> Pki:
    """A fresh CA; a server certificate for IP 127.0.0.1, one for 127.0.0.2 and a client
    certificate, all signed by it. Raises FileNotFoundError without the openssl CLI."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError("the openssl CLI is needed to make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        folder,
        "req",
        "-x509",
        *_EC_KEY,
        "-subj",
        "/CN=stepstream-test-CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    server = _sign(folder, "server", "serverAuth", "IP:127.0.0.1")
    client = _sign(folder, "client", "clientAuth", None)
    wrong = _sign(folder, "wrong-host", "serverAuth", "IP:127.0.0.2")
    return Pki(folder / "ca.pem", *server, *client, *wrong)


class TlsProxy:
    """Accepts TLS on a free loopback port and relays each connection to
    127.0.0.1:`target_port` in plain bytes. With `client_ca`, clients must present a
    certificate signed by it. Runs its own event loop in a thread: `start` returns once
    it listens, `stop` (or leaving the ``with`` block) closes every connection and joins
    the thread.
    """

    def __init__(
        self, target_port: int, certfile: Path, keyfile: Path, client_ca: Path | None = None
    ) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        """TLS connections accepted (handshake done), so tests can see traffic passed."""
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certfile, keyfile)
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(client_ca)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def start(self, timeout: float = 10.0) -> TlsProxy:
        """Listen; raise what went wrong if it could not."""
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"the TLS proxy did not listen within {timeout}s")
        if self._failure is not None:
            self.stop()
            raise self._failure
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection, and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(15)

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); the thread must not die loudly
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._relay, "127.0.0.1", 0, ssl=self._context, ssl_shutdown_timeout=1.0
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        self.connections += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            pipes = [
                asyncio.ensure_future(_pipe(client_r, upstream_w)),
                asyncio.ensure_future(_pipe(upstream_r, client_w)),
            ]
            try:
                # Either side closing ends the pair: TLS transports cannot half-close.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the server is gone; the client sees its connection close
        except asyncio.CancelledError:
            # stop() cancels open relays. Ending normally instead of re-raising: Python
            # 3.11's start_server callback calls exception() on a cancelled task and logs
            # the CancelledError it gets as an error.
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()
            self._relays.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
