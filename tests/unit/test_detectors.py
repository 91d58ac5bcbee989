"""Per-series detectors: each fires on its fault, within its documented delay, and stays
quiet on a noisy but healthy series."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import pytest

from processors.detectors import (
    DivergenceDetector,
    ErrorBurstDetector,
    Flag,
    GradientDetector,
    NonFiniteDetector,
    OverfittingDetector,
    PlateauDetector,
    PlateauParams,
    ResourceDetector,
    SpikeDetector,
    TelemetryLossDetector,
    ThroughputDetector,
)
from processors.detectors.base import with_overrides

Observe = Callable[[str, int, str, int | None, float, float], Flag | None]


def healthy_loss(rng: random.Random, step: int) -> float:
    return 2.0 * math.exp(-step / 300) + 0.3 + rng.gauss(0, 0.03)


def feed(observe: Observe, metric: str, values: Iterable[float], start: int = 0) -> list[Flag]:
    flags = []
    for i, value in enumerate(values, start=start):
        flag = observe("run", 0, metric, i, 1000.0 + i, value)
        if flag is not None:
            flags.append(flag)
    return flags


def assert_evidence(flag: Flag) -> None:
    assert {"value", "baseline", "threshold", "window"} <= set(flag.evidence)


@pytest.mark.parametrize("seed", range(3))
def test_loss_detectors_stay_quiet_on_a_noisy_healthy_run(seed: int) -> None:
    rng = random.Random(seed)
    losses = [healthy_loss(rng, s) for s in range(1000)]
    for detector in (SpikeDetector(), PlateauDetector(), DivergenceDetector(), NonFiniteDetector()):
        assert feed(detector.observe, "loss", losses) == [], type(detector).__name__


def test_nonfinite_flags_once_per_episode() -> None:
    d = NonFiniteDetector()
    flags = feed(d.observe, "loss", [1.0, math.nan, math.nan, 1.0, math.inf])
    assert [(f.step, f.severity) for f in flags] == [(1, "critical"), (4, "critical")]
    assert_evidence(flags[0])


def test_spike_is_flagged_at_the_spiking_step_with_evidence() -> None:
    rng = random.Random(1)
    losses = [healthy_loss(rng, s) for s in range(200)]
    losses[150] *= 5
    flags = feed(SpikeDetector().observe, "loss", losses)
    assert [f.step for f in flags] == [150]
    flag = flags[0]
    assert_evidence(flag)
    assert flag.evidence["value"] == losses[150]
    assert (flag.evidence["z"] or 0) >= 8 and flag.evidence["window"] == 50


def test_spike_params_are_configurable() -> None:
    d = SpikeDetector(with_overrides(SpikeDetector().params, {"metrics": ["acc"], "z": 4}))
    assert d.wants("acc") and not d.wants("loss") and d.params.z == 4
    with pytest.raises(ValueError, match="unknown detector parameters"):
        with_overrides(PlateauParams(), {"patiance": 3})


def test_gradients_explode_and_vanish_per_layer_and_stay_quiet_when_healthy() -> None:
    rng = random.Random(2)
    healthy = [math.exp(rng.gauss(0, 0.3)) for _ in range(500)]
    d = GradientDetector()
    assert feed(d.observe, "grad_norm", healthy) == []
    assert feed(d.observe, "grad_norm/layer1.weight", healthy) == []
    assert d.wants("grad_norm/encoder.0") and not d.wants("grad_norm_x")
    blown = [*healthy[:100], 50.0, 60.0, *healthy[100:120], 1e-06, *healthy[120:140]]
    flags = feed(GradientDetector().observe, "grad_norm/layer2", blown)
    assert [(f.detector, f.step) for f in flags] == [
        ("exploding_gradients", 100),
        ("vanishing_gradients", 122),
    ]
    for flag in flags:
        assert_evidence(flag)
        assert flag.metric == "grad_norm/layer2"


def test_plateau_after_patience_steps_without_improvement() -> None:
    rng = random.Random(4)
    losses = [healthy_loss(rng, s) for s in range(300)] + [0.5 + rng.gauss(0, 0.01)] * 1
    flat = [0.5 + rng.gauss(0, 0.01) for _ in range(400)]
    flags = feed(PlateauDetector().observe, "loss", losses + flat)
    assert len(flags) == 1
    # The jump to 0.5 keeps the EMA improving for ~1/alpha·ln(...) ≈ 60 more steps.
    assert 300 + 200 <= (flags[0].step or 0) <= 300 + 280
    assert_evidence(flags[0])


def test_divergence_when_loss_climbs() -> None:
    rng = random.Random(5)
    losses = [healthy_loss(rng, s) for s in range(300)]
    climb = [losses[-1] * (1.02**i) for i in range(1, 100)]
    flags = feed(DivergenceDetector().observe, "loss", losses + climb)
    assert len(flags) == 1
    assert 300 < (flags[0].step or 0) <= 340  # within ~40 steps of a 2 %/step climb
    assert_evidence(flags[0])


def test_overfitting_when_eval_rises_while_train_falls() -> None:
    rng = random.Random(6)
    d = OverfittingDetector()
    flags: list[Flag] = []
    step = 0
    for epoch in range(30):
        for _ in range(50):
            train = 2.0 * math.exp(-step / 400) + 0.1 + rng.gauss(0, 0.02)
            d.observe("run", 0, "loss", step, float(step), train)
            step += 1
        ev = 1.0 * math.exp(-epoch / 8) + 0.5 + rng.gauss(0, 0.005)
        if epoch >= 20:
            ev += 0.03 * (epoch - 19)  # turns up at epoch 20
        flag = d.observe("run", 0, "eval_loss", step, float(step), ev)
        if flag:
            flags.append(flag)
            assert epoch <= 24
    assert len(flags) == 1 and flags[0].metric == "eval_loss"
    assert_evidence(flags[0])


def test_overfitting_quiet_when_both_fall() -> None:
    rng = random.Random(7)
    d = OverfittingDetector()
    step = 0
    for epoch in range(30):
        for _ in range(50):
            d.observe(
                "run", 0, "loss", step, float(step), 2 * math.exp(-step / 400) + rng.gauss(0, 0.02)
            )
            step += 1
        ev = math.exp(-epoch / 8) + 0.5 + rng.gauss(0, 0.005)
        assert d.observe("run", 0, "eval_loss", step, float(step), ev) is None


def test_throughput_regression_and_healthy() -> None:
    rng = random.Random(8)
    healthy = [1000 + rng.gauss(0, 50) for _ in range(400)]
    assert feed(ThroughputDetector().observe, "samples_per_s", healthy) == []
    slow = healthy[:200] + [600 + rng.gauss(0, 30) for _ in range(30)]
    flags = feed(ThroughputDetector().observe, "samples_per_s", slow)
    assert len(flags) == 1 and 200 <= (flags[0].step or 0) <= 206
    assert_evidence(flags[0])


def test_resource_pressure_sustained_only() -> None:
    rng = random.Random(9)
    d = ResourceDetector()
    healthy = [80 + rng.gauss(0, 5) for _ in range(200)]
    assert feed(d.observe, "sys/host_mem_pct", [min(v, 94.0) for v in healthy]) == []
    assert feed(d.observe, "sys/gpu_mem_pct", [96, 90, 97, 91]) == []  # blips
    flags = feed(d.observe, "sys/disk_pct", [90, 96, 97, 98, 99])
    assert [f.step for f in flags] == [3]
    assert_evidence(flags[0])


def test_error_burst() -> None:
    d = ErrorBurstDetector()
    quiet = [d.observe_log("run", 0, None, 10.0 * i, {"level": 40}, "oops") for i in range(30)]
    assert not any(quiet)
    info = [d.observe_log("run", 1, None, 0.1 * i, {"level": 20}, "fine") for i in range(50)]
    assert not any(info)
    burst = [d.observe_log("run", 2, None, 0.5 * i, {"level": 40}, "CUDA error") for i in range(12)]
    fired = [i for i, f in enumerate(burst) if f]
    assert fired == [9]
    flag = burst[9]
    assert flag is not None and "CUDA error" in flag.summary
    assert_evidence(flag)


def test_telemetry_loss() -> None:
    d = TelemetryLossDetector()
    assert d.observe_batch("run", 0, 1, 1.0, 0, 10) is None
    flag = d.observe_batch("run", 0, 2, 2.0, 3, 10)
    assert flag is not None and flag.evidence["lost"] == 3
    assert d.observe_batch("run", 0, 3, 3.0, 1, 10) is None  # same episode
    assert_evidence(flag)


def test_one_spike_is_not_a_divergence() -> None:
    rng = random.Random(11)
    losses = [healthy_loss(rng, s) for s in range(200)]
    losses[50] *= 20
    assert feed(DivergenceDetector().observe, "loss", losses) == []
