"""System metrics of one rank: process and host CPU, memory, disk, network, open files,
GPUs through NVML when present, and torch.cuda memory when CUDA is in use.

Rates (disk and network bytes per second) are differences between two samples, so the
first sample has none. Every source is optional: what fails once is skipped from then on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import psutil

from stepstream import vocabulary as vocab

log = logging.getLogger(__name__)

PROC_CPU = "sys/proc_cpu_pct"
PROC_RSS = vocab.PROC_RSS.name
PROC_FDS = "sys/proc_open_fds"
HOST_CPU = "sys/host_cpu_pct"
HOST_MEM_USED = vocab.HOST_MEM_USED.name
HOST_MEM_TOTAL = vocab.HOST_MEM_TOTAL.name
HOST_MEM_PCT = vocab.HOST_MEM_PCT.name
DISK_PCT = vocab.DISK_PCT.name
SWAP_PCT = vocab.SWAP_PCT.name
DISK_READ = "sys/disk_read_bps"
DISK_WRITE = "sys/disk_write_bps"
NET_SENT = "sys/net_sent_bps"
NET_RECV = "sys/net_recv_bps"
CUDA_ALLOCATED = vocab.CUDA_ALLOCATED.name
CUDA_RESERVED = vocab.CUDA_RESERVED.name
CUDA_PEAK = "cuda/mem_peak_bytes"


def gpu_name(index: int, what: str) -> str:
    """Name of one NVML value of GPU `index`: util_pct, mem_used_bytes, mem_total_bytes,
    mem_used_pct, temp_c or power_w."""
    return f"gpu{index}/{what}"


class Nvml:
    """NVIDIA GPUs through nvidia-ml-py, imported lazily; `available` is False without it."""

    def __init__(self) -> None:
        self.available = False
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
            self.available = count > 0
        except Exception as exc:  # not installed, no driver, no GPU: skip GPU metrics
            log.debug("stepstream: NVML unavailable, GPU metrics skipped: %s", exc)

    def sample(self) -> dict[str, float]:
        """Utilization, memory, temperature and power of every GPU NVML reports."""
        out: dict[str, float] = {}
        nvml = self._nvml
        if not self.available:
            return out
        for i, handle in enumerate(self._handles):
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                out[gpu_name(i, "util_pct")] = float(util.gpu)
                out[gpu_name(i, "mem_used_bytes")] = float(mem.used)
                out[gpu_name(i, "mem_total_bytes")] = float(mem.total)
                if mem.total:
                    out[gpu_name(i, "mem_used_pct")] = 100.0 * mem.used / mem.total
                out[gpu_name(i, "temp_c")] = float(
                    nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                )
                out[gpu_name(i, "power_w")] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception as exc:  # a device that fails once (unsupported query) stays out
                log.debug("stepstream: NVML query failed on GPU %d: %s", i, exc)
        return out

    def close(self) -> None:
        """Release NVML."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("stepstream: nvmlShutdown failed: %s", exc)
            self._nvml = None
            self.available = False


def cuda_memory() -> dict[str, float]:
    """torch.cuda memory counters of the current device, only if this process already
    uses CUDA: the sampler must never be the one that creates a CUDA context."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        return {
            CUDA_ALLOCATED: float(torch.cuda.memory_allocated()),
            CUDA_RESERVED: float(torch.cuda.memory_reserved()),
            CUDA_PEAK: float(torch.cuda.max_memory_allocated()),
        }
    except Exception as exc:
        log.debug("stepstream: torch.cuda memory query failed: %s", exc)
        return {}


class SystemSampler:
    """Takes one sample of every system metric; call `sample()` periodically."""

    def __init__(self, disk_path: str | os.PathLike[str] = "/", gpus: bool = True) -> None:
        self._proc = psutil.Process()
        self._disk_path = os.fspath(disk_path)
        self._nvml: Nvml | None = Nvml() if gpus else None
        self._last: tuple[float, Any, Any] | None = None
        # cpu_percent() returns 0.0 on its first call: prime both counters now.
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)

    def _io(self) -> tuple[Any, Any]:
        try:
            disk = psutil.disk_io_counters()
        except Exception:
            disk = None
        try:
            net = psutil.net_io_counters()
        except Exception:
            net = None
        return disk, net

    def sample(self) -> dict[str, float]:
        """One sample: instant values and rates since the previous sample."""
        proc = self._proc
        out: dict[str, float] = {
            PROC_CPU: proc.cpu_percent(None),
            HOST_CPU: psutil.cpu_percent(None),
        }
        with proc.oneshot():
            out[PROC_RSS] = float(proc.memory_info().rss)
            with contextlib.suppress(AttributeError, psutil.Error):  # num_fds: POSIX only
                out[PROC_FDS] = float(proc.num_fds())
        mem = psutil.virtual_memory()
        out[HOST_MEM_USED] = float(mem.total - mem.available)
        out[HOST_MEM_TOTAL] = float(mem.total)
        out[HOST_MEM_PCT] = float(mem.percent)
        with contextlib.suppress(OSError):
            out[DISK_PCT] = float(psutil.disk_usage(self._disk_path).percent)
        with contextlib.suppress(OSError, RuntimeError):
            swap = psutil.swap_memory()
            if swap.total:  # no swap configured: nothing to be under pressure
                out[SWAP_PCT] = float(swap.percent)
        now = time.monotonic()
        disk, net = self._io()
        if self._last is not None:
            then, last_disk, last_net = self._last
            dt = max(now - then, 1e-6)
            if disk is not None and last_disk is not None:
                out[DISK_READ] = max(0, disk.read_bytes - last_disk.read_bytes) / dt
                out[DISK_WRITE] = max(0, disk.write_bytes - last_disk.write_bytes) / dt
            if net is not None and last_net is not None:
                out[NET_SENT] = max(0, net.bytes_sent - last_net.bytes_sent) / dt
                out[NET_RECV] = max(0, net.bytes_recv - last_net.bytes_recv) / dt
        self._last = (now, disk, net)
        if self._nvml is not None:
            out.update(self._nvml.sample())
        out.update(cuda_memory())
        return out

    def close(self) -> None:
        """Release NVML if it was opened."""
        if self._nvml is not None:
            self._nvml.close()
