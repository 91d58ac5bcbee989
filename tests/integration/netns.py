"""Test hosts as Linux network namespaces: veth pairs into bridges that live in a namespace
of their own, so nothing touches the root namespace's interfaces and all traffic stays
inside the namespaces made here. Needs root, iproute2 (``ip``) and util-linux
``unshare`` (each host gets its own host name through a UTS namespace).

Two networks, as on a real cluster:

- telemetry, 10.77.0.0/24, ``eth0`` on every host: the SDK, the broker, Redis, workers;
- training, 10.78.0.0/24, ``eth1`` on the training hosts only: gloo and torchrun's store.

`cut` drops every packet of a host's interface in both directions (its port leaves the
bridge; netem is not available on every kernel): the peers see silence and time out, as in
a real partition, while the host's other network goes on. Names are unique per process
(``ss<pid>-<host>``); `Topology.down` deletes every namespace and stops every process it
started, by pid, whatever happened before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.fault_harness import Child

CLONE_NEWNET = 0x40000000
TELEMETRY = ("eth0", "10.77.0")
TRAINING = ("eth1", "10.78.0")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    probe = f"ss{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here (no CAP_SYS_ADMIN?): {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """One simulated host: its namespace, host name and addresses by interface."""

    name: str
    ns: str
    hostname: str
    addresses: dict[str, str]

    @property
    def ip(self) -> str:
        """Its telemetry address."""
        return self.addresses[TELEMETRY[0]]

    @property
    def training_ip(self) -> str:
        """Its training-network address."""
        return self.addresses[TRAINING[0]]


@dataclass
class Topology:
    """Hosts by name; `up` builds them, `down` removes them (call it in a finally)."""

    root: Path
    tag: str = field(default_factory=lambda: f"ss{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)
    _next: dict[str, int] = field(default_factory=dict)

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    def up(self, hosts: Mapping[str, tuple[str, bool]]) -> Topology:
        """Build `hosts`: name -> (host name, on the training network too)."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._add_ns(self.bridge_ns)
        for bridge in ("tel", "trn"):
            _ip("-n", self.bridge_ns, "link", "add", bridge, "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", bridge, "up")
        for index, (name, (hostname, training)) in enumerate(hosts.items(), start=1):
            ns = f"{self.tag}-{name}"
            self._add_ns(ns)
            addresses = {}
            networks = [(TELEMETRY, "tel")] + ([(TRAINING, "trn")] if training else [])
            for (iface, subnet), bridge in networks:
                outer = f"h{index}{iface[-1]}"  # the bridge's end: short, unique
                address = f"{subnet}.{index}"
                _ip(
                    "-n", self.bridge_ns, "link", "add", outer, "type", "veth",
                    "peer", "name", iface, "netns", ns,
                )  # fmt: skip
                _ip("-n", self.bridge_ns, "link", "set", outer, "master", bridge, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", iface)
                _ip("-n", ns, "link", "set", iface, "up")
                addresses[iface] = address
            self.hosts[name] = Host(name, ns, hostname, addresses)
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        """Stop every process started here (by pid, children first), delete namespaces."""
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                kill_tree(child)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()

    def spawn(
        self,
        host: str,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start `cmd` on `host` (its namespace and host name); output to logs/<name>.log."""
        h = self.hosts[host]
        count = self._next[name] = self._next.get(name, 0) + 1
        log = self.root / "logs" / (f"{name}.log" if count == 1 else f"{name}.{count}.log")
        wrapped = [
            "ip", "netns", "exec", h.ns, "unshare", "--uts",
            "sh", "-c", 'hostname "$0" && exec "$@"', h.hostname, *cmd,
        ]  # fmt: skip
        with log.open("ab") as out:
            proc = subprocess.Popen(
                wrapped,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.root,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def _port(self, host: str, iface: str) -> str:
        """The bridge's end of `host`'s `iface`."""
        return f"h{list(self.hosts).index(host) + 1}{iface[-1]}"

    def cut(self, host: str, iface: str = TELEMETRY[0]) -> None:
        """Drop everything `host` sends or receives on `iface`, silently: its port leaves
        the bridge (the cable past the switch port is cut), the host's interface stays up,
        so peers see timeouts, never a reset."""
        _ip("-n", self.bridge_ns, "link", "set", self._port(host, iface), "nomaster")

    def heal(self, host: str, iface: str = TELEMETRY[0]) -> None:
        """Undo `cut`."""
        bridge = "tel" if iface == TELEMETRY[0] else "trn"
        _ip("-n", self.bridge_ns, "link", "set", self._port(host, iface), "master", bridge)

    @contextlib.contextmanager
    def entered(self, host: str) -> Iterator[None]:
        """Run the calling thread in `host`'s network namespace (sockets it opens meanwhile
        stay there; threads it starts meanwhile start there)."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.hosts[host].ns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the host's namespace failed")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back failed")
        finally:
            os.close(own)
            os.close(target)


def kill_tree(child: Child) -> None:
    """SIGKILL `child` and every descendant, by pid (a torchrun agent and its ranks)."""
    import psutil

    try:
        proc = psutil.Process(child.proc.pid)
        family = [*proc.children(recursive=True), proc]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(Exception):
        child.proc.wait(10)
