"""Fail-slow ranks (stage 2, per run): a rank whose rank-local time stays a little above
its peers', step after step: a GPU, NIC or host running 10-40 % slow drags every
collective of the job, yet stays far under the straggler detector's 1.5x.

The test is a one-sided CUSUM over the per-step log ratio of a rank's time to the median
of its peers' at the same step (peers: ranks of the same role, see `RunStage`):

    x_t = clip(log((own_t + eps) / (peers_t + eps)))     z_t = clip(x_t / sigma)
    S_t = min(cap, max(0, S_{t-1} + z_t - k))            alarm when S_t >= h

- The ratio to the peers at the same step cancels what every rank shares (a longer batch
  for everyone, the machine slowing down): only what this rank does differently remains.
- `sigma` is the scale of the rank's own ratio series, from the median absolute
  difference of consecutive points (a step change moves one difference, not the scale).
  Standardising makes the same `k` and `h` right for a 2 ms forward with 1 % noise and
  for a job whose per-step compute varies 3x (variable sequence lengths): heavy jitter
  with equal means has E[z] = 0, and the CUSUM drifts down by `k` a step.
- The alarm needs the shift to matter too: the median ratio over the newest (at most
  `confirm_window`) steps since the CUSUM last left zero (the change point estimate) is
  at least `min_ratio`, and the peers wait at least `min_excess_s` per step for it. A
  systematic but small difference (a rank that also logs, a slightly slower host) keeps S
  high and never fires.
- It clears when S drains back to zero (the rank is no slower than its peers for a while).

The phases judged: ``data`` (data wait less the declared eval/checkpoint seconds that
fell into it: declared work is not slowness) and ``forward`` (the model's own forward,
before any collective). Under FSDP2 or tensor parallelism the forward holds collectives,
so only ``data`` is rank-local there. Pure logic: no faust, Kafka or Redis.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from processors.detectors.base import MAD_SCALE, median
from processors.flags import Episodes, Flag, evidence
from stepstream import vocabulary as vocab

#: The phases the detector judges (the label of its flags' ``metric``).
PHASE_DATA = vocab.PHASE_DATA
PHASE_FORWARD = vocab.PHASE_FORWARD


@dataclass(frozen=True)
class FailSlowParams:
    """Parameters of `FailSlowDetector` (see the module docstring for the test).

    The figures come from healthy 2-4 rank gloo DDP jobs on 2 shared cores
    (`bench/detection.py`'s healthy and jitter jobs, `docs/detectors.md` "Fail-slow"):
    there the median per-step ratio of one rank to its peers over 50 steps stayed within
    the spread documented there, far under `min_ratio`.

    warmup_steps: steps of a (rank, phase) series before it is judged (start-up,
        allocator and data-loader warm-up differ per rank: live jobs here had one rank
        19 % slower over steps 21-43, then not).
    eps_s: added to both times of a ratio: times near zero (a data wait of 50 us) give
        ratios that mean nothing; this pulls them to 1.
    clip: bound of a step's log ratio (log 3): one hiccup counts like a 3x step at most.
    z_clip: bound of a standardised step: a rank with a very quiet series still needs
        a few steps to pass `h`.
    sigma_floor: least scale (log units): below it timer resolution and scheduling
        decide, not the rank.
    scale_window: steps whose consecutive differences give the scale.
    k: CUSUM reference, in scales: half of a one-scale shift.
    h: CUSUM threshold, in scales: with k = 0.5 a false alarm of the CUSUM alone comes
        about once in 10^4-10^5 steps of a rank with equal means (Siegmund's
        approximation); the two confirmations below cut it further.
    cap: S stops growing here (in scales), so a rank that recovers clears within about
        cap / k steps instead of after as long as it was slow.
    min_ratio: least median ratio to the peers, since the change point, to name a rank.
        1.07: a 10 % slower device (the shift Falcon/Greyhound confirms) measures 1.09
        here (the forward's own CPU work dilutes it), while steady healthy jobs with a
        10 ms forward stayed within 1.011-1.039 over 50 steps (four runs, load average
        2-7; `sustain_steps` answers the longer stretches of a loaded machine); in
        jittery jobs, where healthy
        medians drift further, `z_confirm` is what holds (see docs/detectors.md).
    min_excess_s: least time the peers wait per step for it.
    min_points: least steps since the change point whose median is judged.
    sustain_steps: least steps the shift has lasted (since its change point) when named:
        fail-slow is a sustained state. Healthy ranks on a loaded machine do run slower for
        a while: a 10 ms forward ran 10 % (1.4 ms) slower than its peer's for 56 steps at
        load average 5-6, then not. 75 steps, within the 100 the issue allows.
    confirm_window: the shift's size (median ratio, excess) is measured over the newest
        this many steps since the change point: a rank a little slower than its peers
        before the fault keeps the CUSUM above zero, and a median since then mixes that
        healthy stretch in (a live 10 % shift measured 7 % so, 120 steps late). 50 steps
        is the window of the measured healthy spread `min_ratio` rests on.
    z_confirm: the log of that median ratio must be this many standard errors of a
        median (1.25 sigma / sqrt(n)) above zero: under heavy jitter a few points since
        the change point do not make a shift.
    history: per-step (own, peers) points kept for the estimate.
    """

    warmup_steps: int = 50
    eps_s: float = 1e-4
    clip: float = math.log(3.0)
    z_clip: float = 4.0
    sigma_floor: float = 0.02
    scale_window: int = 100
    k: float = 0.5
    h: float = 12.0
    cap: float = 20.0
    min_ratio: float = 1.07
    min_excess_s: float = 0.0005
    min_points: int = 25
    sustain_steps: int = 75
    confirm_window: int = 50
    z_confirm: float = 3.0
    history: int = 200


@dataclass
class _Series:
    """One rank's ratio series for one phase."""

    n: int = 0
    s: float = 0.0
    last: float | None = None
    diffs: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    #: (own, peers) seconds since the CUSUM last left zero.
    since: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=200))


def _sum_declared(values: Mapping[str, float]) -> float:
    total = 0.0
    for signal in vocab.DECLARED_TIME.values():
        v = values.get(signal.name)
        if v is not None and math.isfinite(v):
            total += v
    return total


def phase_times(values: Mapping[str, float], sharded: bool) -> dict[str, float]:
    """A rank's rank-local seconds per judged phase at one step (see the module
    docstring); a phase the rank did not report is absent."""
    out: dict[str, float] = {}
    data = values.get(vocab.DATA_WAIT.name)
    if data is not None and math.isfinite(data):
        out[PHASE_DATA] = max(0.0, data - _sum_declared(values))
    forward = values.get(vocab.FORWARD.name)
    if not sharded and forward is not None and math.isfinite(forward):
        out[PHASE_FORWARD] = forward
    return out


class FailSlowDetector:
    """Names a rank whose data wait or forward stays above its peers' (module docstring).
    Fed one finished step at a time (every rank's values). Delay: `sustain_steps` after the
    onset, or about h / (z - k) steps for a standardised shift z when that is longer (with
    30 % per-step jitter a 20 % shift needs some tens of steps more)."""

    name = "fail_slow"

    def __init__(self, params: FailSlowParams | None = None) -> None:
        self.params = params or FailSlowParams()
        self._series: dict[tuple[str, int, str], _Series] = {}
        self._episodes = Episodes()

    def forget(self, run: str) -> None:
        """Drop what it holds of `run` (gone idle), open episodes without a clear."""
        for key in [k for k in self._series if k[0] == run]:
            del self._series[key]
        self._episodes.forget_run(run)

    def observe_step(
        self,
        run: str,
        step: int,
        t: float,
        ranks: Mapping[int, Mapping[str, float]],
        roles: Mapping[int, Hashable] | None = None,
        sharded: bool = False,
    ) -> list[Flag]:
        """Add one finished step of every rank of `run`; flags of ranks that start or stop
        being slow. `roles` and `sharded` as for `StragglerDetector.observe_step`."""
        role_of = roles or {}
        times = {rank: phase_times(values, sharded) for rank, values in ranks.items()}
        flags: list[Flag] = []
        for phase in (PHASE_DATA, PHASE_FORWARD):
            have = {r: ts[phase] for r, ts in times.items() if phase in ts}
            for rank, own in have.items():
                role = role_of.get(rank)
                peers = [v for r, v in have.items() if r != rank and role_of.get(r) == role]
                if not peers:
                    continue  # alone in its role: nobody does the same work
                flag = self._judge(run, rank, phase, step, t, own, median(peers))
                if flag is not None:
                    flags.append(flag)
        return flags

    def _judge(
        self, run: str, rank: int, phase: str, step: int, t: float, own: float, peers: float
    ) -> Flag | None:
        p = self.params
        key = (run, rank, phase)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                diffs=deque(maxlen=p.scale_window), since=deque(maxlen=p.history)
            )
        series.n += 1
        x = math.log((own + p.eps_s) / (peers + p.eps_s))
        x = max(-p.clip, min(p.clip, x))
        if series.last is not None:
            series.diffs.append(abs(x - series.last))
        series.last = x
        if series.n <= p.warmup_steps or len(series.diffs) < p.min_points:
            return None
        # Consecutive differences of iid points have sqrt(2) x their scale.
        sigma = max(p.sigma_floor, MAD_SCALE * median(series.diffs) / math.sqrt(2.0))
        z = max(-p.z_clip, min(p.z_clip, x / sigma))
        s = min(p.cap, max(0.0, series.s + z - p.k))
        if s == 0.0:
            series.since.clear()
        else:
            series.since.append((own, peers))
        series.s = s
        episode = (run, rank, phase)
        if self._episodes.is_open(episode):
            if s > 0.0:
                return None
            return self._episodes.close(
                episode,
                step,
                t,
                f"rank {rank} fail-slow ({phase}) cleared at step {step}: no slower than "
                f"its peers ({own * 1000:.2f} ms against {peers * 1000:.2f} ms this step)",
                evidence(own / peers if peers > 0 else None, 1.0, p.min_ratio, None),
            )
        if s < p.h or len(series.since) < p.min_points:
            return None
        recent = list(series.since)[-p.confirm_window :]
        own_med = median(o for o, _ in recent)
        peer_med = median(q for _, q in recent)
        ratio = median((o + p.eps_s) / (q + p.eps_s) for o, q in recent)
        excess = own_med - peer_med
        # The shift must also be significant for the series' own noise: the median of n
        # points has a standard error of about 1.25 sigma / sqrt(n) (normal data).
        se = 1.2533 * sigma / math.sqrt(len(recent))
        if ratio < p.min_ratio or excess < p.min_excess_s or math.log(ratio) < p.z_confirm * se:
            return None
        # The CUSUM may have left zero before the change (a rank a little slower all
        # along): where the shift began within `since`, and its size and cost after that.
        points = list(series.since)
        split = _split(points, p.eps_s, sigma, p.min_points)
        after = points[split:]
        if len(after) < p.sustain_steps:
            return None
        # Its size and cost now: the newest steps after the split (where no split stands
        # out, the window the confirmation read).
        size = after[-p.confirm_window :]
        own_med = median(o for o, _ in size)
        peer_med = median(q for _, q in size)
        ratio = median((o + p.eps_s) / (q + p.eps_s) for o, q in size)
        excess = own_med - peer_med
        onset = step - len(after) + 1
        flag = Flag(
            detector=self.name,
            run=run,
            rank=rank,
            metric=phase,
            step=step,
            t=t,
            severity="warning",
            summary=(
                f"rank {rank} is fail-slow in {phase}: {(ratio - 1) * 100:.0f} % above its "
                f"peers since about step {onset} ({own_med * 1000:.2f} ms against "
                f"{peer_med * 1000:.2f} ms); the peers wait {excess * 1000:.2f} ms per step "
                "for it"
            ),
            evidence=evidence(
                ratio,
                1.0,
                p.min_ratio,
                float(len(series.since)),
                shift_pct=(ratio - 1) * 100,
                own_s=own_med,
                peers_s=peer_med,
                cost_s_per_step=excess,
                onset_step=float(onset),
                cusum=s,
                scale=sigma,
            ),
            labels={"phase": phase},
        )
        return self._episodes.start(episode, flag)


def _split(points: list[tuple[float, float]], eps: float, sigma: float, least: int) -> int:
    """Where a level shift of the log ratios of `points` ((own, peers) seconds) began: the
    split maximising the two means' difference weighted by the segments' sizes (the
    least-squares single change point), kept only when the later mean is above the
    earlier by 3 standard errors (`sigma` per point); 0 (no earlier segment) otherwise.
    At least `least` points stay after it."""
    xs = [math.log((o + eps) / (q + eps)) for o, q in points]
    n = len(xs)
    total = sum(xs)
    best, best_stat, before = 0, 0.0, 0.0
    for k in range(1, n - least + 1):
        before += xs[k - 1]
        diff = (total - before) / (n - k) - before / k
        if diff <= 3 * sigma * math.sqrt(1 / k + 1 / (n - k)):
            continue
        stat = k * (n - k) / n * diff * diff
        if stat > best_stat:
            best, best_stat = k, stat
    return best
