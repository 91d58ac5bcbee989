"""Per-series detectors: each fires on its fault, within its documented delay, stays quiet
on a noisy but healthy series, and reports the end of each episode with a cleared flag."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pytest

from processors.detectors import (
    DivergenceDetector,
    DivergenceParams,
    ErrorBurstDetector,
    ErrorBurstParams,
    Flag,
    GradientDetector,
    NonFiniteDetector,
    OverfittingDetector,
    OverfittingParams,
    PlateauDetector,
    PlateauParams,
    ResourceDetector,
    SpikeDetector,
    TelemetryLossDetector,
    TelemetryLossParams,
    ThroughputDetector,
    ThroughputParams,
)
from processors.detectors.base import with_overrides
from processors.series_stage import ValueDetector
from stepstream.errors import ConfigError

Observe = Callable[[str, int, str, int | None, float, float], Sequence[Flag]]


def healthy_loss(rng: random.Random, step: int) -> float:
    return 2.0 * math.exp(-step / 300) + 0.3 + rng.gauss(0, 0.03)


def feed(observe: Observe, metric: str, values: Iterable[float], start: int = 0) -> list[Flag]:
    flags: list[Flag] = []
    for i, value in enumerate(values, start=start):
        flags.extend(observe("run", 0, metric, i, 1000.0 + i, value))
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
    assert [(f.step, f.cleared, f.severity) for f in flags] == [
        (1, False, "critical"),
        (3, True, "critical"),
        (4, False, "critical"),
    ]
    assert_evidence(flags[0])
    assert flags[1].evidence["value"] == 1.0


def test_spike_is_flagged_at_the_spiking_step_with_evidence() -> None:
    rng = random.Random(1)
    losses = [healthy_loss(rng, s) for s in range(200)]
    losses[150] *= 5
    flags = feed(SpikeDetector().observe, "loss", losses)
    assert [(f.step, f.cleared) for f in flags] == [(150, False), (151, True)]
    flag = flags[0]
    assert_evidence(flag)
    assert flag.evidence["value"] == losses[150]
    assert (flag.evidence["z"] or 0) >= 8 and flag.evidence["window"] == 50


def test_spike_params_are_configurable() -> None:
    d = SpikeDetector(with_overrides(SpikeDetector().params, {"metrics": ["acc"], "z": 4}))
    assert d.wants("acc") and not d.wants("loss") and d.params.z == 4
    with pytest.raises(ConfigError, match="unknown detector parameters"):
        with_overrides(PlateauParams(), {"patiance": 3})


def test_gradients_explode_and_vanish_per_layer_and_stay_quiet_when_healthy() -> None:
    rng = random.Random(2)
    healthy = [math.exp(rng.gauss(0, 0.3)) for _ in range(500)]
    d = GradientDetector()
    assert feed(d.observe, "grad_norm", healthy) == []
    assert feed(d.observe, "grad/norm/layer1.weight", healthy) == []
    assert d.wants("grad_norm/encoder.0") and d.wants("grad/global_norm")
    assert not d.wants("grad_norm_x") and not d.wants("weight/norm/fc")
    # A 10x collapse for 6 points: judged on the median of the last 5 norms.
    collapsed = [h * 0.1 for h in healthy[120:126]]
    blown = [*healthy[:100], 50.0, 60.0, *healthy[100:120], *collapsed, *healthy[126:140]]
    flags = feed(GradientDetector().observe, "grad_norm/layer2", blown)
    assert [(f.detector, f.step, f.cleared) for f in flags] == [
        ("exploding_gradients", 100, False),
        ("exploding_gradients", 102, True),
        ("vanishing_gradients", 124, False),  # the third collapsed point of five
        ("vanishing_gradients", 130, True),  # the third healthy point after the collapse
    ]
    for flag in flags:
        assert_evidence(flag)
        assert flag.metric == "grad_norm/layer2"


def layer_steps(
    detector: GradientDetector, steps: int, scale: Callable[[int, int], float], seed: int = 0
) -> list[Flag]:
    """Feed `steps` steps of 6 layers' norms, layer i at step s scaled by scale(i, s)."""
    rng = random.Random(seed)
    flags: list[Flag] = []
    for step in range(steps):
        for layer in range(6):
            value = (layer + 1) * math.exp(rng.gauss(0, 0.3)) * scale(layer, step)
            flags.extend(
                detector.observe("run", 0, f"grad/norm/l{layer}", step, 1000.0 + step, value)
            )
    return flags


def test_one_layer_collapsing_is_vanishing_but_the_whole_model_shrinking_is_not() -> None:
    # Every layer shrinking 20x within 10 steps (a loss reaching zero, an LR cut): training.
    together = layer_steps(GradientDetector(), 200, lambda i, s: 1.0 if s < 100 else 0.05)
    assert together == []
    # One layer collapsing 10x while the others hold: vanishing, on that layer only.
    one = layer_steps(GradientDetector(), 200, lambda i, s: 0.1 if i == 3 and s >= 100 else 1.0)
    assert [(f.detector, f.metric, f.cleared) for f in one] == [
        ("vanishing_gradients", "grad/norm/l3", False)
    ]
    assert 100 <= (one[0].step or 0) <= 104  # within the median of the last 5 points
    # The collapse lasts: the frozen baseline keeps it firing (no cleared flag above).


def test_plateau_after_patience_steps_without_improvement() -> None:
    rng = random.Random(4)
    losses = [healthy_loss(rng, s) for s in range(300)] + [0.5 + rng.gauss(0, 0.01)] * 1
    flat = [0.5 + rng.gauss(0, 0.01) for _ in range(400)]
    # The loss alone: a converged run is flat too, so it takes `require_stall=False`.
    loss_only = PlateauDetector(PlateauParams(require_stall=False))
    flags = feed(loss_only.observe, "loss", losses + flat)
    assert len(flags) == 1
    # The jump to 0.5 keeps the EMA improving for ~1/alpha·ln(...) ≈ 60 more steps.
    assert 300 + 200 <= (flags[0].step or 0) <= 300 + 280
    assert_evidence(flags[0])


def test_plateau_needs_training_to_stall_not_just_a_flat_loss() -> None:
    rng = random.Random(4)
    detector = PlateauDetector()
    flags: list[Flag] = []
    for step in range(900):
        loss = healthy_loss(rng, step) if step < 300 else 0.5 + rng.gauss(0, 0.01)
        lr = 0.1 if step < 600 else 0.0  # converged at ~300; learning rate cut to 0 at 600
        flags += detector.observe("run", 0, "opt/lr/0", step, float(step), lr)
        if step % 10 == 0:  # watch() sends update ratios every 10 steps by default
            ratio = 1e-3 if step < 600 else 0.0
            for layer in ("fc1.weight", "fc2.weight"):
                flags += detector.observe("run", 0, f"update_ratio/{layer}", step, 0.0, ratio)
        flags += detector.observe("run", 0, "loss", step, float(step), loss)
    # Converged from ~300 while training still moved: no plateau. Stalled at 600: a
    # plateau as soon as the loss has been flat `patience` steps and the LR is 0.
    assert [(f.cleared, f.step) for f in flags] == [(False, 600)]
    assert "learning rate 0" in flags[0].summary
    # Another run's and another rank's training moving ends nothing here.
    for other_run, other_rank in (("other", 0), ("run", 1)):
        assert detector.observe(other_run, other_rank, "opt/lr/0", 900, 900.0, 0.1) == ()
        assert detector.observe(other_run, other_rank, "update_ratio/a", 900, 0.0, 1e-3) == ()
    # Training moves again (a learning rate, then updates): the plateau clears.
    assert detector.observe("run", 0, "opt/lr/0", 901, 901.0, 0.05) == ()
    (cleared,) = detector.observe("run", 0, "update_ratio/fc1.weight", 910, 910.0, 1e-3)
    assert cleared.cleared and cleared.step == 910


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
        found = d.observe("run", 0, "eval_loss", step, float(step), ev)
        if found:
            flags.extend(found)
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
        assert d.observe("run", 0, "eval_loss", step, float(step), ev) == ()


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
    assert [(f.step, f.cleared) for f in flags] == [(3, False)]
    assert_evidence(flags[0])


def test_error_burst() -> None:
    d = ErrorBurstDetector()
    quiet = [d.observe_log("run", 0, None, 10.0 * i, {"log/level": 40}, "oops") for i in range(30)]
    assert not any(quiet)
    info = [d.observe_log("run", 1, None, 0.1 * i, {"log/level": 20}, "fine") for i in range(50)]
    assert not any(info)
    error = {"log/level": 40.0}
    burst = [d.observe_log("run", 2, None, 0.5 * i, error, "CUDA error") for i in range(12)]
    fired = [i for i, f in enumerate(burst) if f]
    assert fired == [9]
    flag = burst[9]
    assert flag is not None and "CUDA error" in flag.summary
    assert_evidence(flag)


def test_error_burst_reads_the_level_the_sdk_sends() -> None:
    # The SDK's log capture sends WARNING and above under the vocabulary's name; warnings
    # are not errors. A hand-published record may use the alias `level`.
    d = ErrorBurstDetector()
    level = producers_log_level()
    warnings = [d.observe_log("run", 0, None, 0.1 * i, {level: 30}, "slow") for i in range(40)]
    assert not any(warnings)
    errors = [d.observe_log("run", 1, None, 0.1 * i, {"level": 40}, "boom") for i in range(10)]
    assert [i for i, f in enumerate(errors) if f] == [9]


def producers_log_level() -> str:
    from producers.loghandler import LOG_LEVEL

    return LOG_LEVEL


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


# Episodes end with a cleared flag -------------------------------------------------------


def flat(n: int, level: float = 1.0, seed: int = 0) -> list[float]:
    """`n` points of small noise around `level`."""
    rng = random.Random(seed)
    return [level * (1 + rng.gauss(0, 0.01)) for _ in range(n)]


@dataclass(frozen=True)
class Episode:
    """A series whose condition starts, clears and starts again, and what it must give:
    (cleared, step) per flag, in order, and each flag's evidence value (the point itself,
    or the statistic the detector judges)."""

    name: str
    make: Callable[[], ValueDetector]
    metric: str
    values: list[float]
    expected: list[tuple[bool, int]]
    detector: str
    reported: list[float] | None = None  # None: the points at the expected steps


PLATEAU = PlateauParams(alpha=1.0, patience=20, require_stall=False)  # EMA = value: exact
DIVERGENCE = DivergenceParams(alpha=1.0, median_of=1, start_points=3, rise=10.0)
THROUGHPUT = ThroughputParams(baseline_points=20, recent_points=4)

EPISODES = [
    Episode(
        "spike",
        SpikeDetector,
        "loss",
        [*flat(30), 5.0, *flat(20, seed=1), 5.0],
        [(False, 30), (True, 31), (False, 51)],
        "spike",
    ),
    Episode(
        "exploding",
        GradientDetector,
        "grad_norm/layer1",
        [*flat(30), 50.0, *flat(19, seed=1), 50.0],
        [(False, 30), (True, 31), (False, 50)],
        "exploding_gradients",
    ),
    Episode(
        "vanishing",
        GradientDetector,
        "grad_norm",
        # judged on the median of the last 5 points: three low points start, three
        # healthy ones end an episode
        [*flat(30), *[1e-6] * 3, *flat(19, seed=1), *[1e-6] * 3],
        [(False, 32), (True, 35), (False, 54)],
        "vanishing_gradients",
    ),
    Episode(
        "plateau",
        lambda: PlateauDetector(PLATEAU),
        "loss",
        # flat from step 0: stalled 20 steps at step 20; improves at 25; flat again
        [1.0] * 25 + [0.5] * 21,
        [(False, 20), (True, 25), (False, 45)],
        "plateau",
    ),
    Episode(
        "divergence",
        lambda: DivergenceDetector(DIVERGENCE),
        "loss",
        [1.0] * 10 + [2.0] + [1.0] * 9 + [2.0],
        [(False, 10), (True, 11), (False, 20)],
        "divergence",
    ),
    Episode(
        "throughput",
        lambda: ThroughputDetector(THROUGHPUT),
        "samples_per_s",
        # one point a second = one 1 s bucket, judged when the next point closes it: the
        # recent median (4 buckets) drops below 70 % of 100 at the third slow bucket, is
        # back at (50, 50, 100, 100) -> 75, and drops again
        [100.0] * 20 + [50.0] * 3 + [100.0] * 7 + [50.0] * 3 + [100.0],
        [(False, 23), (True, 25), (False, 33)],
        "throughput_regression",
        reported=[50.0, 75.0, 50.0],  # recent medians
    ),
    Episode(
        "resource",
        ResourceDetector,
        "sys/disk_pct",
        # 94 is under the limit but within the hysteresis: the episode goes on until 92
        [90.0, 96, 97, 98, 94, 92, 96, 97, 98],
        [(False, 3), (True, 5), (False, 8)],
        "resource_pressure",
    ),
    Episode(
        "nonfinite",
        NonFiniteDetector,
        "loss",
        [1.0, math.nan, math.inf, 1.0, 1.0, -math.inf],
        [(False, 1), (True, 3), (False, 5)],
        "nonfinite",
    ),
]


def check_episode(flags: list[Flag], expected: list[tuple[bool, int]], detector: str) -> None:
    """Flags match `expected` and all name the same (detector, run, rank, metric) and
    severity; cleared ones say so and carry the usual evidence."""
    assert [(f.cleared, f.step) for f in flags] == expected
    assert {(f.detector, f.run, f.rank, f.metric, f.severity) for f in flags} == {
        (detector, flags[0].run, flags[0].rank, flags[0].metric, flags[0].severity)
    }
    for flag in flags:
        assert_evidence(flag)
        if flag.cleared:
            assert "cleared" in flag.summary or "again" in flag.summary, flag.summary
            assert f"step {flag.step}" in flag.summary, flag.summary


@pytest.mark.parametrize("case", EPISODES, ids=lambda c: c.name)
def test_an_episode_starts_clears_and_starts_again(case: Episode) -> None:
    detector = case.make()
    flags = feed(detector.observe, case.metric, case.values)
    check_episode(flags, case.expected, case.detector)
    assert flags[0].metric == case.metric
    assert [f.t for f in flags] == [1000.0 + step for _, step in case.expected]
    reported = case.reported or [case.values[step] for _, step in case.expected]
    assert [repr(f.evidence["value"]) for f in flags] == [repr(v) for v in reported]


def test_episode_values_of_smoothed_detectors() -> None:
    # Detectors that judge a statistic report that statistic, not the raw point.
    plateau = feed(PlateauDetector(PLATEAU).observe, "loss", [1.0] * 25 + [0.5])
    assert [(f.cleared, f.evidence["value"], f.evidence["baseline"]) for f in plateau] == [
        (False, 1.0, 1.0),
        (True, 0.5, 1.0),
    ]
    slow = [100.0] * 20 + [50.0] * 3 + [100.0] * 3
    throughput = feed(ThroughputDetector(THROUGHPUT).observe, "samples_per_s", slow)
    assert [(f.cleared, f.evidence["value"], f.evidence["threshold"]) for f in throughput] == [
        (False, 50.0, 70.0),
        (True, 75.0, 70.0),
    ]


@pytest.mark.parametrize("case", EPISODES, ids=lambda c: c.name)
def test_no_cleared_flag_without_an_episode(case: Episode) -> None:
    # Healthy points (here those before the first start; above, the noisy healthy runs)
    # take the branch that would end an episode: with none open it must give nothing.
    first = case.expected[0][1]
    detector = case.make()
    assert feed(detector.observe, case.metric, case.values[:first]) == []


def test_exploding_then_vanishing_ends_one_episode_and_starts_the_other() -> None:
    values = [*flat(30), 50.0, *[1e-6] * 3, *[1.0] * 3]
    flags = feed(GradientDetector().observe, "grad_norm", values)
    assert [(f.detector, f.cleared, f.step) for f in flags] == [
        ("exploding_gradients", False, 30),
        ("exploding_gradients", True, 31),
        ("vanishing_gradients", False, 33),
        ("vanishing_gradients", True, 36),
    ]
    assert [f.severity for f in flags] == ["critical", "critical", "warning", "warning"]


def test_overfitting_starts_clears_and_starts_again() -> None:
    # single evaluations and exact limits: the edges, not the defaults' noise margins
    d = OverfittingDetector(OverfittingParams(alpha=1.0, evals=1, rise=0.05, train_drop=0.01))
    evals = [1.0, 0.9, 0.8, 0.9, 0.7, 0.9]  # up at 3, a new best at 4, up again at 5
    flags: list[Flag] = []
    for epoch, ev in enumerate(evals):
        step = 10 * epoch
        assert d.observe("run", 0, "loss", step, float(step), 1.0 - 0.05 * epoch) == ()
        flags += d.observe("run", 0, "eval_loss", step, float(step), ev)
    check_episode(flags, [(False, 30), (True, 40), (False, 50)], "overfitting")
    assert flags[0].metric == "eval_loss"
    assert [(f.evidence["value"], f.evidence["baseline"]) for f in flags] == [
        (0.9, 0.8),
        (0.7, 0.7),
        (0.9, 0.7),
    ]


def test_error_burst_starts_clears_and_starts_again() -> None:
    d = ErrorBurstDetector(ErrorBurstParams(window_s=10.0, count=3))
    flags: list[Flag] = []
    for t, level in [(0, 40), (1, 40), (2, 40), (5, 40), (16, 20), (20, 40), (21, 40), (22, 40)]:
        flag = d.observe_log("run", 1, t, float(t), {"level": level}, "boom")
        flags += [flag] if flag else []
    # Started by the third error; the info log at 16 finds no error since 6; again at 22.
    check_episode(flags, [(False, 2), (True, 16), (False, 22)], "error_burst")
    assert flags[1].evidence["value"] == 0.0


def test_error_burst_clears_on_any_record_of_the_rank() -> None:
    d = ErrorBurstDetector(ErrorBurstParams(window_s=10.0, count=3))
    assert d.advance("run", 1, 0, 0.0) is None  # nothing known of the rank
    flags = [d.observe_log("run", 1, t, float(t), {}, None) for t in range(3)]
    assert [f is not None for f in flags] == [False, False, True]
    assert d.advance("run", 1, 11, 11.9) is None  # the error at t=2 is still in the window
    cleared = d.advance("run", 1, 12, 12.0)
    assert cleared is not None and (cleared.cleared, cleared.step, cleared.t) == (True, 12, 12.0)
    assert d.advance("run", 1, 13, 13.0) is None  # one end per episode


def test_telemetry_loss_starts_clears_and_starts_again() -> None:
    d = TelemetryLossDetector(TelemetryLossParams(window_batches=3))
    flags: list[Flag] = []
    for step, lost in enumerate([0, 2, 0, 0, 0, 1]):
        flag = d.observe_batch("run", 0, step, float(step), lost, 10)
        flags += [flag] if flag else []
    # Lost at batch 1; the window of 3 batches has none from batch 4; lost again at 5.
    check_episode(flags, [(False, 1), (True, 4), (False, 5)], "telemetry_loss")
    assert [(f.evidence["value"], f.evidence["lost"]) for f in flags] == [
        (2 / 22, 2.0),
        (0.0, 0.0),
        (1 / 31, 1.0),
    ]


def test_overfitting_stays_firing_while_eval_loss_is_above_its_best() -> None:
    d = OverfittingDetector(OverfittingParams(evals=1, rise=0.05, train_drop=0.01))
    flags: list[Flag] = []
    step = 0
    evals = [1.0, 0.9, 0.8, 0.85, 0.9, 1.0, 1.1, 1.2, 1.3, 1.1, 0.9, 0.83, 0.79]
    for i, ev in enumerate(evals):
        for _ in range(20):
            flags += d.observe("run", 0, "loss", step, float(step), 2.0 * math.exp(-step / 100))
            step += 1
        for flag in d.observe("run", 0, "val_loss", step, float(step), ev):  # an alias
            flags.append(flag)
            assert flag.metric == "val_loss"
        if i == 12:
            break
    # Fires once eval is 5 % over its best (0.8 -> 0.85 is 6 %), and stays firing while
    # eval keeps rising and while the train loss flattens: it clears only when eval loss
    # is back within 5 % of its best (0.83 <= 0.84).
    assert [(f.cleared, f.evidence["value"]) for f in flags] == [(False, 0.85), (True, 0.83)]


def test_a_loss_falling_faster_than_its_median_is_not_a_spike() -> None:
    rng = random.Random(9)
    # a plateau, then a sudden drop (a learning-rate warm-up ending): good news
    losses = [2.0 + rng.gauss(0, 0.01) for _ in range(60)] + [1.0 + rng.gauss(0, 0.01)] * 5
    assert feed(SpikeDetector().observe, "loss", losses) == []
    flags = feed(SpikeDetector().observe, "loss", [*losses[:60], 3.0])
    assert [(f.step, f.cleared) for f in flags] == [(60, False)]
