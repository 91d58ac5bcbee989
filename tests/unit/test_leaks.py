"""The memory-leak detector: sustained growth projected to exhaustion, or without a plateau;
warm-up growth that levels off and healthy noise stay quiet."""

from __future__ import annotations

import random

from processors.detectors import LeakDetector, LeakParams
from processors.flags import Flag
from processors.series_stage import build_value_detectors
from stepstream import vocabulary as vocab

MiB = 2**20
RSS = vocab.PROC_RSS.name


def feed(
    d: LeakDetector,
    rss: object,
    seconds: int,
    host_total: float = 24e9,
    host_used: float = 2e9,
    metric: str = RSS,
) -> list[tuple[int, Flag]]:
    """One sample a second, as the SDK's sampler sends them; (second, flag) of each flag."""
    out = []
    for s in range(seconds):
        t = 1000.0 + s
        d.observe("r", 0, vocab.HOST_MEM_TOTAL.name, None, t, host_total)
        d.observe("r", 0, vocab.HOST_MEM_USED.name, None, t, host_used + rss(s))  # type: ignore[operator]
        out += [(s, f) for f in d.observe("r", 0, metric, None, t, rss(s))]  # type: ignore[operator]
    return out


def noise(seed: int) -> object:
    rng = random.Random(seed)
    return lambda s: 300 * MiB + rng.randrange(-64, 64) * 4096  # page-sized jitter


def test_a_leak_of_20_mb_s_fires_within_a_minute_with_rate_and_projection() -> None:
    d = LeakDetector()

    def rss(s: int) -> float:
        return 300 * MiB + (20e6 * (s - 60) if s >= 60 else 0.0)  # leaks from s=60

    flags = feed(d, rss, 200)
    assert [(f.detector, f.rank, f.metric, f.cleared) for _, f in flags] == [
        ("memory_leak", 0, RSS, False)
    ]
    at, flag = flags[0]
    assert 60 + 25 <= at <= 60 + 45, at
    rate, recent = flag.evidence["rate_bytes_s"], flag.evidence["recent_rate_bytes_s"]
    assert rate is not None and 5e6 < rate < 20.1e6  # the window still holds the flat start
    assert recent is not None and abs(recent - 20e6) < 1e5
    # 22 GB free less what the leak took: about 18 min at 20 MB/s
    projected = flag.evidence["projected_s"]
    assert projected is not None and 900 < projected < 1100
    assert flag.evidence["headroom_bytes"] == 24e9 - (2e9 + rss(at))
    assert "runs out in" in flag.summary


def test_warm_up_growth_that_levels_off_and_healthy_noise_stay_quiet() -> None:
    d = LeakDetector()

    def warm_up(s: int) -> float:  # 40 MB/s for 20 s, then flat with page jitter
        return 300 * MiB + 40e6 * min(s, 20) + (s % 3) * 4096

    assert feed(d, warm_up, 1200) == []
    assert feed(LeakDetector(), noise(1), 1200) == []


def test_slow_growth_with_plenty_of_room_fires_only_after_sustained_s() -> None:
    d = LeakDetector(LeakParams(sustained_s=600.0))
    flags = feed(d, lambda s: 300 * MiB + 1e6 * s, 900, host_total=1e12)  # 1 MB/s, 1 TB free
    assert [f.detector for _, f in flags] == ["memory_leak"]
    at, flag = flags[0]
    assert 600 <= at <= 610
    assert flag.evidence["growing_s"] is not None and flag.evidence["growing_s"] >= 600


def test_the_leak_clears_when_growth_stops_and_gpu_memory_uses_its_total() -> None:
    d = LeakDetector()
    gpu = "gpu1/mem_used_bytes"
    flags = []
    for s in range(400):
        t = 1000.0 + s
        d.observe("r", 2, "gpu1/mem_total_bytes", None, t, 80e9)
        used = 10e9 + 50e6 * min(s, 200)  # 50 MB/s until s=200: 80 GB in about 23 min
        flags += [(s, f) for f in d.observe("r", 2, gpu, None, t, used)]
    assert [(f.metric, f.rank, f.cleared) for _, f in flags] == [(gpu, 2, False), (gpu, 2, True)]
    assert flags[0][1].evidence["projected_s"] is not None
    assert flags[0][1].evidence["projected_s"] < 1800
    assert 200 < flags[1][0] <= 260


def test_no_bound_known_needs_the_limit_or_sustained_growth() -> None:
    cuda = vocab.CUDA_ALLOCATED.name
    d = LeakDetector()
    quiet = [
        f for s in range(300) for f in d.observe("r", 0, cuda, None, 1000.0 + s, 1e9 + 20e6 * s)
    ]
    assert quiet == []  # 20 MB/s but nothing to run out of, yet
    d = LeakDetector(LeakParams(limit_bytes=16e9))
    loud = [
        f for s in range(300) for f in d.observe("r", 0, cuda, None, 1000.0 + s, 1e9 + 20e6 * s)
    ]
    assert [f.metric for f in loud] == [cuda]


def test_stage_1_runs_it_on_the_memory_series() -> None:
    names = [type(d).__name__ for d in build_value_detectors(None) if d.wants(RSS)]
    assert names == ["LeakDetector"]
    leak = next(d for d in build_value_detectors(None) if isinstance(d, LeakDetector))
    assert leak.wants("gpu3/mem_used_bytes") and leak.wants(vocab.CUDA_RESERVED.name)
    assert not leak.wants("loss")
