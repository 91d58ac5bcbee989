"""Live goodput of a run (stage 2): how much of its wall time trained, and where the rest
went, from its finished steps. Pure logic: no faust, Kafka or Redis.

Per finished step every rank reported (its values by vocabulary name):

- wall: the median of the ranks' step times (collectives make them equal);
- ``eval``, ``checkpoint``: the longest declared eval/checkpoint seconds of a rank in the
  step (`perf/eval_s`, `perf/checkpoint_s`; the peers wait for that rank);
- ``data_wait``: the input wait every rank paid, the least of the ranks' data waits less
  their declared seconds (a longer wait on one rank is that rank's slowness, below);
- ``slowest_rank``: the longest rank-local time (data wait less declared + forward) less
  the ranks' median: what the peers waited for that rank in the collective, attributed
  to it (`Goodput.slowest_by_rank`);
- ``hang_stall``: what is left of the step beyond `stall_factor` x the recent median of
  that remainder (and `stall_floor_s`): a step held by a hang or a stall;
- productive: the remainder.

Between finished steps, event time not covered by the steps' own wall time (more than
`gap_floor_s`) is a gap: ``restart`` when a rank came back as a new incarnation in it,
else ``hang_stall`` (nothing finished). ETTR = productive / (wall + gaps).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from processors.detectors.base import median
from stepstream import vocabulary as vocab
from stepstream.contract import Goodput

CAUSES = vocab.BADPUT_CAUSES


@dataclass(frozen=True)
class GoodputParams:
    """stall_factor / stall_floor_s: a step's remainder beyond this many times its recent
    median, and by this many seconds, is a hang or stall. recent: steps of that median.
    gap_floor_s: event time between finished steps beyond their wall time counted as a
    gap (below it: clock skew between ranks, flush timing)."""

    stall_factor: float = 10.0
    stall_floor_s: float = 1.0
    recent: int = 50
    gap_floor_s: float = 2.0


def _get(values: Mapping[str, float], name: str) -> float:
    v = values.get(name)
    return v if v is not None and math.isfinite(v) and v > 0 else 0.0


@dataclass
class GoodputMeter:
    """The goodput of one run, fed its finished steps in order (`add_step`)."""

    params: GoodputParams = field(default_factory=GoodputParams)
    steps: int = 0
    wall_s: float = 0.0
    productive_s: float = 0.0
    badput: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0.0))
    slowest_by_rank: dict[int, float] = field(default_factory=dict)
    last_step: int | None = None
    last_t: float | None = None
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=50))

    def add_step(
        self,
        step: int,
        t: float,
        ranks: Mapping[int, Mapping[str, float]],
        restarted: bool = False,
    ) -> bool:
        """Add one finished step (`t`: its event time, the newest of its ranks');
        `restarted`: a rank changed incarnation since the previous one. False (and nothing
        counted) when no rank reported a step time."""
        walls = [_get(v, vocab.STEP_TIME.name) for v in ranks.values()]
        walls = [w for w in walls if w > 0]
        if not walls:
            return False
        wall = median(walls)
        if self.last_t is not None:
            gap = t - self.last_t - wall
            if gap > self.params.gap_floor_s:
                self.badput["restart" if restarted else "hang_stall"] += gap
                self.wall_s += gap
        declared: dict[str, float] = {}
        local: dict[int, float] = {}
        waits: list[float] = []
        for rank, values in ranks.items():
            mine = 0.0
            for phase, signal in vocab.DECLARED_TIME.items():
                seconds = _get(values, signal.name)
                declared[phase] = max(declared.get(phase, 0.0), seconds)
                mine += seconds
            wait = max(0.0, _get(values, vocab.DATA_WAIT.name) - mine)
            waits.append(wait)
            local[rank] = wait + _get(values, vocab.FORWARD.name)
        left = wall
        for phase, seconds in declared.items():
            take = min(left, seconds)
            self.badput[phase] += take
            left -= take
        data = min(left, min(waits)) if waits else 0.0
        self.badput["data_wait"] += data
        left -= data
        if len(local) > 1:
            slow_rank = max(local, key=lambda r: (local[r], -r))
            lost = min(left, max(0.0, local[slow_rank] - median(local.values())))
            if lost > 0:
                self.badput["slowest_rank"] += lost
                self.slowest_by_rank[slow_rank] = self.slowest_by_rank.get(slow_rank, 0.0) + lost
                left -= lost
        usual = median(self._recent) if self._recent else None
        if usual is not None:
            limit = max(usual * self.params.stall_factor, usual + self.params.stall_floor_s)
            if left > limit:
                self.badput["hang_stall"] += left - usual
                left = usual
        self._recent.append(left)
        self.productive_s += left
        self.wall_s += wall
        self.steps += 1
        self.last_step = step
        self.last_t = t
        return True

    def snapshot(self, run: str, until: float | None = None) -> Goodput:
        """The run's goodput so far; `until`: the newest event time heard from the run
        (heartbeats go on while no step finishes), so a hang or stall in progress counts
        as ``hang_stall`` up to then, without being committed: the step that ends it
        decides whether it was a restart."""
        badput = dict(self.badput)
        wall = self.wall_s
        t = self.last_t or 0.0
        if until is not None and self.last_t is not None:
            gap = until - self.last_t
            if gap > self.params.gap_floor_s:
                badput["hang_stall"] += gap
                wall += gap
                t = until
        return Goodput(
            run=run,
            step=self.last_step,
            t=t,
            steps=self.steps,
            wall_s=wall,
            productive_s=self.productive_s,
            ettr=self.productive_s / wall if wall > 0 else None,
            badput_s=badput,
            slowest_by_rank={str(r): s for r, s in sorted(self.slowest_by_rank.items())},
        )
