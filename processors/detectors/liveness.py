"""Liveness of the ranks of a run (stage 2): dead, hung, exited early, finished.

A rank's lifecycle comes from its heartbeats (`stepstream.vocabulary.STATUS_CODES`):
starting, running, closing (it called ``monitor.close()`` or the interpreter exited
cleanly) and crashed. A closed rank is finished: never dead, never hung. A run whose ranks
all closed is finished. A rank that closed while its peers still step is reported once,
``rank_exited``, when a peer has stepped `exit_grace_s` past its close (staggered ends of
a job, up to that grace apart, raise nothing).

Hangs are judged against the job's own rhythm: the median time per step of the run
(estimated from the steps the ranks report as summaries arrive; until a few have arrived,
from the step times the ranks reported), times `hung_factor`, with
a floor (`hung_floor_s`), capped by `hung_after_s`. The phase every heartbeat carries
(`stepstream.vocabulary.PHASES`) names the origin: under data parallelism a rank blocked
outside the collective (its data loader, forward, a checkpoint) holds its peers in the
collective (``backward``); the origin is the rank outside the collective that has been in
its phase longest (or, with every rank inside it, the one longest in it). A rank whose step
is behind every peer's is the origin whatever its phase: its peers finished a step it did
not, so it waits for none of them (one rank in a collective its peers never call, after
its backward, still reports ``backward``). The threshold is
the origin's: declared phases (eval, checkpoint) are long by nature and get
`declared_floor_s`; a rank outside the loop, or any run one of whose ranks has already
closed, gets `hung_after_s`. A rank whose phase keeps changing is working (an evaluation
loop without ``monitor.phase``), not stuck: the origin must have been in its phase for
the threshold too. One ``hung_rank`` episode per run; every rank's phase in its evidence;
the stack the origin's SDK captured (see `producers.periodic`) in its description.

A node that goes away is one incident, ``node_lost`` (`processors.detectors.nodes` holds
the rule): every rank of a node of two or more ranks silent, their last words within
`node_window_s` of each other, while a rank of another node still reports. The dead ranks'
own ``dead_rank`` flags carry the node label, so the alerting inhibits them while the
node's alert fires; a dead rank whose node peer is still within that window of its last
word waits for the verdict (at most `node_window_s`), so the node's alert comes first.

Time is the processor's arrival clock (`now`), so skewed clocks on training nodes do not
matter. Pure logic: `processors.run_stage` feeds it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from processors.detectors.base import median
from processors.detectors.nodes import RankView, judge_nodes, node_labels
from processors.flags import Episodes, Flag, cleared_flag, evidence
from stepstream import vocabulary as vocab


@dataclass(frozen=True)
class LivenessParams:
    """Parameters of `LivenessDetector`.

    heartbeat_interval_s: how often a rank sends something (a heartbeat at least).
    dead_after: a rank silent this many intervals is dead. 2.5 keeps the alert within 3
        intervals of the death (the timer and the pipeline add about 0.3 interval) while a
        live rank, whose apparent silence is at most about one interval plus its delivery
        jitter, stays 1.5 intervals clear of it.
    hung_after_s: the cap: a rank heard from whose step has not moved this long is hung
        whatever its rhythm (and the threshold while the rhythm is unknown).
    hung_factor: hung after this many median step times without a step...
    hung_floor_s: ...and at least this long (sub-second steps jitter: a GC pause, a slow
        batch, a periodic host sync). 20 x and 5 s: a job of 2-200 ms steps is reported
        hung 5-6 s after it stops, well inside the 30 s asked of sub-second jobs.
    declared_floor_s: the floor for a rank in a declared phase (eval, checkpoint), long by
        nature: a checkpoint write taking longer than this while the peers wait is
        reported (with its stack).
    rhythm_points: step intervals a rank needs before its rhythm is trusted.
    exit_grace_s: a rank that closed is ``rank_exited`` once a peer still stepped this
        long after the close (staggered ends up to this apart raise nothing).
    stack_chars: the most characters of captured stacks an alert's description carries.
    node_window_s: the ranks of a lost node fell silent within this many seconds of each
        other (None: the dead window, dead_after x heartbeat_interval_s). A node's ranks die
        together but last spoke up to one heartbeat apart.
    never_heard_s: a rank of the run's world never heard from is dead once this long has
        passed since the run was first heard (while other ranks report): a rank that
        crashed before its first record, or died before a processor that took the run over
        heard it. Ranks start seconds apart (imports, data set-up before ``init()``): 30 s.
        Judged once two ranks or more of the run are heard (a job that instruments rank 0
        only is not a job whose other ranks failed).
    witness_after: a silent rank is dead (a node lost) only once a peer was heard this
        many intervals after its last word. A processor cut off from the broker, or
        stalled, hears every rank fall silent at once, but their last arrivals lie up to an
        interval apart: without a witness heard after the silence began, the ranks it heard
        last would pass for alive for a moment, and the others for dead. 1.5 intervals
        clears that spread; a peer of a rank really gone speaks within one interval, so the
        verdict is not later for it.
    rebalance_grace_s: after the processors' consumer group rebalanced, silences and
        stalls count from this long after the new assignment: the moved partitions catch
        up one by one, and a rank whose partition is still in handover looks silent while
        its peers report (a false dead rank, or a false lost node).
    """

    heartbeat_interval_s: float = 1.0
    dead_after: float = 2.5
    witness_after: float = 1.5
    never_heard_s: float = 30.0
    rebalance_grace_s: float = 2.0
    hung_after_s: float = 120.0
    hung_factor: float = 20.0
    hung_floor_s: float = 5.0
    declared_floor_s: float = 30.0
    rhythm_points: int = 5
    exit_grace_s: float = 30.0
    stack_chars: int = 4096
    node_window_s: float | None = None


#: Read marks sent per heartbeat interval. A silence is judged once a mark says its
#: partition was read a dead window past the rank's last word, so the marks' period adds
#: to every dead_rank delay: one per interval added up to a whole interval (3.1-3.4 s
#: against 2.6 s for a single-host run beside two CPU burners); four add a quarter.
READ_MARKS_PER_HEARTBEAT = 4
#: The most read marks a second one stage-2 worker is sent while the period is shorter
#: than a heartbeat: every stage-1 worker marks every summaries partition, so a worker
#: receives partitions/period marks a second whatever the number of workers.
READ_MARKS_RECEIVED_PER_S = 20.0


def read_mark_interval_s(heartbeat_interval_s: float, partitions: int) -> float:
    """How often stage 1 sends its read marks: READ_MARKS_PER_HEARTBEAT per heartbeat
    interval, slower where that would send a stage-2 worker more than
    READ_MARKS_RECEIVED_PER_S, and never slower than one per interval."""
    fast = heartbeat_interval_s / READ_MARKS_PER_HEARTBEAT
    return min(heartbeat_interval_s, max(fast, partitions / READ_MARKS_RECEIVED_PER_S))


@dataclass(frozen=True)
class KnownRank:
    """A rank as the rank registry last recorded it (see LivenessDetector.seed)."""

    rank: int
    t: float
    step: int | None = None
    node: str = ""
    status: str | None = None


@dataclass
class _Rank:
    seen: float
    step: int | None = None
    step_moved: float = 0.0
    #: (arrival time, step) at the moves of the step, for the rhythm.
    moves: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=33))
    closed_at: float | None = None
    phase: str | None = None
    #: Seconds in `phase` as of `phase_at` (arrival time of the heartbeat that said so).
    phase_s: float = 0.0
    phase_at: float = 0.0
    stack: str | None = None
    stack_at: float = 0.0
    node: str = ""
    crashed: bool = False
    """Its newest heartbeat said it crashed: a software fault, not a lost node."""
    said: float | None = None
    """Event time of its newest record (its host's clock): when its last words were said,
    whatever the pipeline's lag per partition (see judge_nodes)."""
    partition: int | None = None
    """The telemetry partition stage 1 read it from (None: not told)."""
    lag_floor: float | None = None
    """The least arrival-minus-event time seen of its words: its host's clock offset plus
    the pipeline's quickest passage, the base its staleness is measured from."""

    def known_until(self) -> float | None:
        """The processor-clock time its newest word stands for (None: no event time).

        Ranks whose telemetry crosses a lagging partition are heard on time but speak of
        seconds ago; comparing these across ranks says how much older one rank's news is.
        """
        if self.said is None or self.lag_floor is None:
            return None
        return self.said + self.lag_floor

    def in_phase(self, now: float) -> float | None:
        """Seconds the rank has been in its phase at `now` (None: phase unknown)."""
        return None if self.phase is None else self.phase_s + (now - self.phase_at)

    def rhythm(self, points: int) -> float | None:
        """The median seconds per step between the moves of its step (None: too few). A
        rank whose step moves many steps at a time (its SDK sends once a second) is
        trusted after two moves spanning 4 x `points` steps: each move already averages
        many steps, and waiting for `points` moves would leave its first seconds judged on
        the cap alone."""
        moves = self.moves
        if len(moves) <= points and (len(moves) < 3 or moves[-1][1] - moves[0][1] < 4 * points):
            return None
        pairs = list(self.moves)
        per_step = [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in itertools.pairwise(pairs)]
        return median(per_step)


@dataclass
class _Run:
    world: int = 1
    ranks: dict[int, _Rank] = field(default_factory=dict)
    #: Arrival time of the run's first summary here (see LivenessParams.never_heard_s).
    first_seen: float = 0.0
    #: The step times its ranks reported for its finished steps (`step_time`).
    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    #: When a rank was last heard leaving a declared phase (eval, checkpoint): its peers
    #: waited for it until then, and hear of their own steps moving on up to a send
    #: interval (and a partition's lag) later, so their stuck time counts from it.
    duty_ended: float = float("-inf")

    def finished(self) -> bool:
        """Every rank of the run closed."""
        return len(self.ranks) >= self.world and all(
            s.closed_at is not None for s in self.ranks.values()
        )


@dataclass(frozen=True)
class HangVerdict:
    """The state of a run's ranks at one moment, judged for a hang."""

    origin: int
    stuck_s: float
    in_phase_s: float | None
    threshold_s: float
    step_s: float | None
    hung: bool


class LivenessDetector:
    """Flags ``dead_rank`` (silent for dead_after x heartbeat_interval_s while another rank
    of its run is still heard from, and not closed), ``hung_rank`` (see the module
    docstring: one per run, naming the origin rank) and ``rank_exited``. A dead rank clears
    when heard from again, a hung run when a step moves, an exited rank when the run
    finishes or the rank comes back. Delays: dead_after x heartbeat_interval_s plus the
    timer period and the read marks' (read_mark_interval_s); hung: the threshold plus the
    timer period; exited: exit_grace_s.
    """

    DEAD = vocab.DEAD_RANK
    HUNG = vocab.HUNG_RANK
    EXITED = vocab.RANK_EXITED
    NODE_LOST = vocab.NODE_LOST

    def __init__(self, params: LivenessParams | None = None) -> None:
        self.params = params or LivenessParams()
        self._runs: dict[str, _Run] = {}
        self._episodes = Episodes()
        #: Runs forgotten since the last `take_forgotten` (their episodes ended silently).
        self._forgotten: list[str] = []
        #: While the processors rebalance nothing arrives, and silences are not judged;
        #: afterwards they count from `_resumed_at` (see LivenessParams.rebalance_grace_s).
        self._paused = False
        self._resumed_at = float("-inf")
        #: When each telemetry partition was last known read to its end (see partitions_read).
        self._read_at: dict[int, float] = {}

    def pause(self) -> None:
        """The processors' partitions are being reassigned: judge no silence until `resume`."""
        self._paused = True

    def resume(self, now: float) -> None:
        """Partitions assigned again at `now`: silences count from the grace after it."""
        self._paused = False
        self._resumed_at = now + self.params.rebalance_grace_s

    def partitions_read(self, ages: Mapping[int, float], now: float, said: float) -> None:
        """A read mark heard at `now`, said at `said` (its worker's clock): stage 1 had read
        everything the broker held of each telemetry partition in `ages` as of that many
        seconds before. Silences of their ranks since before then are the ranks' own.

        A mark that took longer than the dead window to arrive says nothing current (a
        worker cut off sends its marks on heal); with clocks further apart than that, no
        mark counts and peers witness silences instead (LivenessParams.witness_after).
        """
        p = self.params
        if now - said > p.dead_after * p.heartbeat_interval_s:
            return
        for partition, age in ages.items():
            at = now - max(0.0, age)
            self._read_at[partition] = max(self._read_at.get(partition, at), at)

    def _witnessed(self, rank: _Rank, latest_peer: float, witness_s: float) -> bool:
        """Whether `rank`'s silence is surely its own, not this pipeline's: its telemetry
        partition was read to its end a whole dead window after its last word (a rank
        sends once per flush interval, which may exceed the heartbeat's: anything shorter
        can be a message not sent yet), or, where no read marks come, a peer was heard
        `witness_s` after it, `latest_peer` being when the last was heard (see
        LivenessParams.witness_after)."""
        read = self._read_at.get(rank.partition) if rank.partition is not None else None
        if read is not None:
            p = self.params
            return read - rank.seen >= p.dead_after * p.heartbeat_interval_s
        return latest_peer - rank.seen >= witness_s

    def seed(self, run: str, world: int, known: list[KnownRank]) -> int:
        """Take the ranks of `run` a previous owner knew (the rank registry: each rank's
        last word) as heard when they last spoke; ranks this detector heard itself are
        kept. Returns how many were seeded.

        A cold owner (a run's partition moved) otherwise knows only the ranks that speak:
        one that died before the move would never be reported, nor its dead-rank alert
        re-asserted. Its silence counts from its last word (its host's clock), so it is
        judged once the rebalance grace has passed.
        """
        state = self._runs.get(run)
        if state is None:
            if not known:
                # A run new to the registry too: it starts when its first summary arrives
                # (a run made here with no first_seen would count its never-heard ranks
                # from the last rebalance).
                return 0
            state = self._runs[run] = _Run(first_seen=min(k.t for k in known))
        state.world = max(state.world, world)
        taken = 0
        for k in known:
            if k.rank in state.ranks or k.rank < 0:
                continue
            rank = state.ranks[k.rank] = _Rank(
                seen=k.t, step=k.step, step_moved=k.t, node=k.node, said=k.t
            )
            if k.status == vocab.CLOSING:
                rank.closed_at = k.t
            rank.crashed = k.status == vocab.CRASHED
            taken += 1
        return taken

    def seen(
        self,
        run: str,
        rank: int,
        world: int,
        step: int | None,
        now: float,
        status: str | None = None,
        phase: str | None = None,
        phase_s: float | None = None,
        stack: str | None = None,
        node: str | None = None,
        said: float | None = None,
        partition: int | None = None,
    ) -> list[Flag]:
        """Record that `rank` (on `node`) was heard from at `now`, at `step` (None if no
        step), with its heartbeat `status`, `phase` (for `phase_s` seconds) and a captured
        `stack`, its newest record stamped `said` (event time), read from telemetry
        `partition`; cleared flags of the episodes that ends."""
        p = self.params
        state = self._runs.get(run)
        if state is None:
            state = self._runs[run] = _Run(first_seen=now)
        state.world = max(state.world, world)
        rank_state = state.ranks.get(rank)
        first_words = rank_state is None
        if rank_state is None:
            rank_state = state.ranks[rank] = _Rank(seen=now, step=step, step_moved=now)
            if step is not None:
                rank_state.moves.append((now, step))
        silent = now - rank_state.seen
        rank_state.seen = max(rank_state.seen, now)
        if said is not None:
            rank_state.said = said if rank_state.said is None else max(rank_state.said, said)
            lag = now - said
            floor = rank_state.lag_floor
            rank_state.lag_floor = lag if floor is None else min(floor, lag)
        if phase is not None:
            if rank_state.phase in vocab.DECLARED_PHASES and phase not in vocab.DECLARED_PHASES:
                state.duty_ended = now
            rank_state.phase, rank_state.phase_s, rank_state.phase_at = phase, phase_s or 0.0, now
        if stack:
            rank_state.stack, rank_state.stack_at = stack, now
        if node:
            rank_state.node = node
        if partition is not None:
            rank_state.partition = partition
        if status is not None:
            rank_state.crashed = status == vocab.CRASHED
        flags: list[Flag] = []
        if rank_state.node:
            lost = self._episodes.end((self.NODE_LOST, run, rank_state.node))
            if lost is not None:
                flags.append(
                    cleared_flag(
                        lost,
                        rank_state.step,
                        now,
                        f"node {rank_state.node} of run {run} is back: rank {rank} heard "
                        f"from after {silent:.1f}s",
                        lost.evidence,
                    )
                )
        if step is not None and (rank_state.step is None or step > rank_state.step):
            stuck = now - rank_state.step_moved
            rank_state.step = step
            rank_state.step_moved = now
            rank_state.moves.append((now, step))
            hung = (self.HUNG, run)
            opening = self._episodes.end(hung) if self._episodes.is_open(hung) else None
            if opening is not None and opening.rank != rank:
                self._episodes.start(hung, opening)  # another rank moving: still hung
                opening = None
            if opening is not None:
                flags.append(
                    cleared_flag(
                        opening,
                        step,
                        now,
                        f"run {run} moving again: rank {rank} at step {step} after {stuck:.0f}s",
                        evidence(stuck, None, opening.evidence.get("threshold"), None),
                    )
                )
        if status == vocab.CLOSING:
            if rank_state.closed_at is None:
                rank_state.closed_at = now
        elif status is not None and rank_state.closed_at is not None:
            rank_state.closed_at = None  # a rank that closed is back (a restart)
            opening = self._episodes.end((self.EXITED, run, rank))
            if opening is not None:
                flags.append(
                    cleared_flag(
                        opening,
                        rank_state.step,
                        now,
                        f"rank {rank} of run {run} is back ({status})",
                        evidence(None, None, p.exit_grace_s, None),
                    )
                )
        opening = self._episodes.end((self.DEAD, run, rank))
        if opening is not None:
            back = (
                f"rank {rank} of run {run} heard from at last (step {rank_state.step})"
                if first_words
                else f"rank {rank} of run {run} heard from again after {silent:.1f}s "
                f"(step {rank_state.step})"
            )
            flags.append(
                cleared_flag(
                    opening,
                    rank_state.step,
                    now,
                    back,
                    evidence(
                        silent,
                        None,
                        p.dead_after * p.heartbeat_interval_s,
                        p.heartbeat_interval_s,
                    ),
                )
            )
        if state.finished():
            flags += self._finish(run, state, now)
        return flags

    def finished(self, run: str) -> bool:
        """True when every rank of `run` closed."""
        state = self._runs.get(run)
        return state is not None and state.finished()

    def _finish(self, run: str, state: _Run, now: float) -> list[Flag]:
        """Cleared flags of what a finished run still had open."""
        flags = []
        for rank, s in state.ranks.items():
            opening = self._episodes.end((self.EXITED, run, rank))
            if opening is not None:
                flags.append(
                    cleared_flag(
                        opening,
                        s.step,
                        now,
                        f"run {run} finished: every rank closed",
                        evidence(None, None, self.params.exit_grace_s, None),
                    )
                )
        opening = self._episodes.end((self.HUNG, run))
        if opening is not None:
            flags.append(
                cleared_flag(
                    opening,
                    opening.step,
                    now,
                    f"run {run} finished: every rank closed",
                    evidence(None, None, opening.evidence.get("threshold"), None),
                )
            )
        return flags

    def forget(self, run: str) -> None:
        """Drop what is known of `run` (its partition was processed elsewhere meanwhile):
        its episodes end without cleared flags; it starts afresh when heard from."""
        state = self._runs.get(run)
        if state is not None:
            self._forget(run, state)

    def take_forgotten(self) -> list[str]:
        """Runs forgotten since the last call (their episodes' incidents are stale)."""
        runs, self._forgotten = self._forgotten, []
        return runs

    def rhythm(self, run: str) -> float | None:
        """The run's median seconds per step (None until known)."""
        state = self._runs.get(run)
        return None if state is None else self._rhythm(state)

    def step_time(self, run: str, seconds: float) -> None:
        """A finished step of `run` took `seconds` by its ranks' own clocks (the median of
        their reported step times): the run's rhythm until the arrivals of its summaries
        give one."""
        state = self._runs.get(run)
        if state is not None and seconds > 0:
            state.step_times.append(seconds)

    def _rhythm(self, state: _Run) -> float | None:
        points = self.params.rhythm_points
        per_rank = [r for s in state.ranks.values() if (r := s.rhythm(points)) is not None]
        if per_rank:
            return median(per_rank)
        # A job that hangs within its first seconds has sent too few summaries (once a
        # second) for a rhythm from their arrivals, and was judged on the 120 s cap; the
        # step times its ranks reported with them say the same.
        if len(state.step_times) >= points:
            return median(state.step_times)
        return None

    def judge(self, state: _Run, ranks: list[int], now: float) -> HangVerdict | None:
        """The hang verdict of the run at `now` over its live, unclosed `ranks`."""
        p = self.params
        stepping = [r for r in ranks if state.ranks[r].step is not None]
        if not stepping:
            return None
        stale = _staleness({r: state.ranks[r].known_until() for r in stepping})
        # A rank whose news is a dead window older than its peers' is behind them in what
        # was heard, not in what it did: its partition lags (a loaded processor), and its
        # step a few seconds on is not known yet.
        fresh = [r for r in stepping if stale[r] <= p.dead_after * p.heartbeat_interval_s]
        behind = _behind({r: state.ranks[r].step for r in fresh})

        def order(r: int) -> tuple[bool, bool, bool, float, int]:
            s = state.ranks[r]
            in_phase = s.in_phase(now)
            # A rank behind every peer's step is waiting for none of them, whatever its
            # phase says: they finished a step it did not, so they passed every collective
            # of that step with it. It is stuck in its own work, or in a collective they
            # never call (an extra all-reduce on one rank, in its backward phase).
            late = r in behind
            inside = (s.phase is None or s.phase in vocab.COLLECTIVE_PHASES) and not late
            # Under FSDP2 and tensor parallelism a rank in its forward may be waiting in an
            # all-gather for the origin: it comes after ranks outside the loop's forward
            # (its data loader, a declared eval), whatever the heartbeats' timing noise.
            waiting = s.phase == vocab.PHASE_FORWARD and not late
            return (
                not late,
                inside,
                waiting,
                -(in_phase if in_phase is not None else now - s.step_moved),
                r,
            )

        origin = min(stepping, key=order)
        duty = self._on_duty(state, stepping, origin, now, stale)
        origin = origin if duty is None else duty
        s = state.ranks[origin]
        step_s = self._rhythm(state)
        if any(x.closed_at is not None for x in state.ranks.values()) or (
            s.phase == vocab.PHASE_OUTSIDE
        ):
            threshold = p.hung_after_s  # the run is ending, or the rank is outside the loop
        else:
            floor = p.declared_floor_s if s.phase in vocab.DECLARED_PHASES else p.hung_floor_s
            rhythm = p.hung_factor * step_s if step_s is not None else p.hung_after_s
            threshold = min(p.hung_after_s, max(floor, rhythm))
        # Its stuck time counts to what its news stands for, not to now, and from the end
        # of a duty the run waited for (a rank in the all-reduce through a peer's 12 s
        # checkpoint was judged hung when the checkpoint's end was heard before its step
        # moved on: test_detection_e2e's declared duties, 1 full run in 3 here).
        stuck = now - max(s.step_moved, self._resumed_at, state.duty_ended) - stale[origin]
        in_phase = s.in_phase(now)
        if in_phase is not None:
            in_phase -= stale[origin]
        hung = stuck >= threshold and (in_phase is None or in_phase >= threshold)
        return HangVerdict(origin, stuck, in_phase, threshold, step_s, hung)

    def _on_duty(
        self,
        state: _Run,
        stepping: list[int],
        origin: int,
        now: float,
        stale: dict[int, float],
    ) -> int | None:
        """A rank in a declared phase (eval, checkpoint) since before `origin` got stuck,
        if any: the run waits for that duty, whatever the origin's reported step says.

        In lockstep every rank waits for the slowest. A rank one step "behind" the rank on
        duty is most often only reported so (its last step's record not flushed yet when
        the duty began), and judged on its own it would be hung after 5 s of a 12 s
        checkpoint. A rank stuck since before the duty began is still the origin.
        """
        if state.ranks[origin].phase in vocab.DECLARED_PHASES:
            return None
        s = state.ranks[origin]
        stuck = now - max(s.step_moved, self._resumed_at) - stale[origin]
        # Reports of the duty's start and of the others' last step come up to a heartbeat
        # interval apart (each rank's own send cycle), each way.
        slack = 2 * self.params.heartbeat_interval_s
        on_duty = [
            (in_phase, r)
            for r in stepping
            if r != origin
            and state.ranks[r].phase in vocab.DECLARED_PHASES
            and (in_phase := state.ranks[r].in_phase(now)) is not None
            and in_phase - stale[r] + slack >= stuck
        ]
        return max(on_duty)[1] if on_duty else None

    def tick(self, now: float) -> list[Flag]:
        """Judge every known run at `now`."""
        p = self.params
        dead_s = p.dead_after * p.heartbeat_interval_s
        flags: list[Flag] = []
        if self._paused:
            return flags
        resumed = self._resumed_at
        for run, state in list(self._runs.items()):
            quiet = all(now - s.seen > 10 * dead_s for s in state.ranks.values())
            if state.finished():
                flags += self._finish(run, state, now)
                if quiet:
                    self._forget(run, state)
                continue
            open_ranks = [r for r, s in state.ranks.items() if s.closed_at is None]
            alive = [r for r in open_ranks if now - max(state.ranks[r].seen, resumed) < dead_s]
            if not alive:
                flags += self._left_behind(run, state, open_ranks, now, dead_s)
                if quiet:
                    self._forget(run, state)  # ended long ago
                continue
            witness_s = p.witness_after * p.heartbeat_interval_s
            latest = max(state.ranks[r].seen for r in alive)
            # Judged for the silent only: the others' silence is no question yet.
            witnessed = {
                r
                for r, s in state.ranks.items()
                if now - max(s.seen, resumed) < dead_s or self._witnessed(s, latest, witness_s)
            }
            nodes = judge_nodes(
                {
                    r: RankView(
                        s.node,
                        max(s.seen, resumed),
                        s.closed_at is not None,
                        s.crashed,
                        s.said,
                        r in witnessed,
                    )
                    for r, s in state.ranks.items()
                },
                now,
                dead_s,
                self.node_window_s,
            )
            for node, ranks in nodes.lost.items():
                key_node = (self.NODE_LOST, run, node)
                if not self._episodes.is_open(key_node):
                    flags.append(
                        self._episodes.start(
                            key_node, self._node_lost(run, state, node, ranks, alive, now, dead_s)
                        )
                    )
            for rank in open_ranks:
                s = state.ranks[rank]
                silent = now - max(s.seen, resumed)
                key = (self.DEAD, run, rank)
                if silent >= dead_s and rank in nodes.waiting:
                    continue  # its node's verdict first: see judge_nodes
                if silent < dead_s or self._episodes.is_open(key):
                    continue
                if rank in witnessed:  # else the silence may be the pipeline's (witness_after)
                    flags.append(
                        self._dead(
                            run,
                            rank,
                            s.step,
                            s.seen,
                            f"rank {rank} of run {run} silent for {now - s.seen:.1f}s "
                            f"(last step {s.step}) while {len(alive)} rank(s) still report",
                            evidence(silent, None, dead_s, p.heartbeat_interval_s),
                            node_labels(s.node),
                        )
                    )
            flags += self._never_heard(run, state, alive, now, resumed)
            flags += self._exited(run, state, alive, now)
            if not self._episodes.is_open((self.HUNG, run)):
                verdict = self.judge(state, alive, now)
                if verdict is not None and verdict.hung:
                    flag = self._hung(run, state, verdict, now)
                    flags.append(self._episodes.start((self.HUNG, run), flag))
        return flags

    @property
    def node_window_s(self) -> float:
        """How close together the last words of a lost node's ranks are."""
        p = self.params
        window = p.node_window_s
        return p.dead_after * p.heartbeat_interval_s if window is None else window

    def _node_lost(
        self,
        run: str,
        state: _Run,
        node: str,
        ranks: list[int],
        alive: list[int],
        now: float,
        dead_s: float,
    ) -> Flag:
        last = max(state.ranks[r].seen for r in ranks)
        first = min(state.ranks[r].seen for r in ranks)
        step = max((s for r in ranks if (s := state.ranks[r].step) is not None), default=None)
        listed = ", ".join(str(r) for r in ranks)
        others = sorted({state.ranks[r].node or "?" for r in alive})
        return Flag(
            detector=self.NODE_LOST,
            run=run,
            rank=None,
            metric=None,
            step=step,
            t=last,
            severity="critical",
            summary=f"node {node} of run {run} lost: ranks {listed} silent for "
            f"{now - last:.1f}s (last words {last - first:.1f}s apart) while "
            f"{len(alive)} rank(s) on {', '.join(others)} still report",
            evidence=evidence(
                now - last,
                None,
                dead_s,
                self.params.heartbeat_interval_s,
                ranks=float(len(ranks)),
                spread_s=last - first,
            ),
            affected=tuple(f"rank {r}" for r in ranks),
            labels=node_labels(node),
        )

    def _left_behind(
        self, run: str, state: _Run, open_ranks: list[int], now: float, dead_s: float
    ) -> list[Flag]:
        """Dead flags of the open ranks that fell silent before peers closed or crashed.

        A rank that dies without a word often takes its peers down with it: gloo and NCCL
        raise in the next collective and the peers close (or crash) within milliseconds, so
        no peer is still alive when its silence reaches `dead_s`. Peers that closed after
        its last word are witnesses all the same. A job stopped whole (every rank silent,
        none closed) has none: that is not one rank's death.
        """
        resumed = self._resumed_at
        # Twice the dead bound: ranks that end together close a heartbeat apart or more
        # (their last words are up to a flush interval old), and a loaded host's close
        # takes a moment; a rank still closing must not read as one that died first.
        bound = 2 * dead_s
        flags = []
        for rank in open_ranks:
            s = state.ranks[rank]
            last = max(s.seen, resumed)
            if now - last < bound or self._episodes.is_open((self.DEAD, run, rank)):
                continue
            if s.crashed:
                continue  # it said so itself: reported as its crash, not as a silence
            after = sorted(
                r
                for r, x in state.ranks.items()
                if r != rank
                and (
                    (x.closed_at is not None and x.closed_at > last)
                    or (x.crashed and x.seen > last)
                )
            )
            if not after:
                continue
            flags.append(
                self._dead(
                    run,
                    rank,
                    s.step,
                    s.seen,
                    f"rank {rank} of run {run} silent for {now - s.seen:.1f}s (last step "
                    f"{s.step}) and never closed, while {len(after)} rank(s) went on to "
                    "close or crash after its last word: it died first",
                    evidence(now - last, None, dead_s, self.params.heartbeat_interval_s),
                    node_labels(s.node),
                )
            )
        return flags

    def _never_heard(
        self, run: str, state: _Run, alive: list[int], now: float, resumed: float
    ) -> list[Flag]:
        """Dead flags of the ranks of the run's world never heard from (see
        LivenessParams.never_heard_s), while `alive` ranks report."""
        p = self.params
        # One rank heard of several is a job that instruments rank 0 only (a common
        # pattern), not one whose other ranks all failed: nothing is judged then.
        if len(state.ranks) >= state.world or len(state.ranks) < 2:
            return []
        waited = now - max(state.first_seen, resumed)
        if waited < p.never_heard_s:
            return []
        flags = []
        for rank in range(state.world):
            if rank in state.ranks or self._episodes.is_open((self.DEAD, run, rank)):
                continue
            flags.append(
                self._dead(
                    run,
                    rank,
                    None,
                    state.first_seen,
                    f"rank {rank} of run {run} never reported in {waited:.0f}s while "
                    f"{len(alive)} of its {state.world} ranks do: it failed before its first "
                    "record, or never started",
                    evidence(waited, None, p.never_heard_s, p.heartbeat_interval_s),
                )
            )
        return flags

    def _dead(
        self,
        run: str,
        rank: int,
        step: int | None,
        t: float,
        summary: str,
        ev: dict[str, float | None],
        labels: dict[str, str] | None = None,
    ) -> Flag:
        """Open the dead episode of `rank` with its flag (a clear comes when it is heard)."""
        flag = Flag(
            detector=self.DEAD,
            run=run,
            rank=rank,
            metric=None,
            step=step,
            t=t,
            severity="critical",
            summary=summary,
            evidence=ev,
            labels=labels or {},
        )
        return self._episodes.start((self.DEAD, run, rank), flag)

    def _exited(self, run: str, state: _Run, alive: list[int], now: float) -> list[Flag]:
        grace = self.params.exit_grace_s
        flags = []
        for rank, s in state.ranks.items():
            if s.closed_at is None or self._episodes.is_open((self.EXITED, run, rank)):
                continue
            going = [r for r in alive if state.ranks[r].step_moved >= s.closed_at + grace]
            if not going:
                continue
            peers = ", ".join(f"rank {r} at step {state.ranks[r].step}" for r in going)
            flag = Flag(
                detector=self.EXITED,
                run=run,
                rank=rank,
                metric=None,
                step=s.step,
                t=s.closed_at,
                severity="warning",
                summary=f"rank {rank} of run {run} exited (closed at step {s.step}) while the "
                f"run continues: {peers}, {now - s.closed_at:.0f}s later",
                evidence=evidence(
                    now - s.closed_at, None, grace, None, peers_stepping=float(len(going))
                ),
            )
            flags.append(self._episodes.start((self.EXITED, run, rank), flag))
        return flags

    def _hung(self, run: str, state: _Run, v: HangVerdict, now: float) -> Flag:
        origin = state.ranks[v.origin]
        extra: dict[str, float | None] = {
            "stuck_s": v.stuck_s,
            "step_multiple": v.stuck_s / v.step_s if v.step_s else None,
            "origin_phase": _code(origin.phase),
        }
        listing = []
        # Steps are listed where they differ: a rank behind the others is the origin.
        steps_differ = len({s.step for s in state.ranks.values() if s.step is not None}) > 1
        for r in sorted(state.ranks):
            s = state.ranks[r]
            in_phase = s.in_phase(now)
            extra[f"phase_rank{r}"] = _code(s.phase)
            extra[f"phase_s_rank{r}"] = in_phase
            what = s.phase or "phase unknown"
            if s.closed_at is not None:
                what = "closed"
            elif self._episodes.is_open((self.DEAD, run, r)):
                what = "silent"
            took = f" {in_phase:.1f}s" if in_phase is not None and what == s.phase else ""
            at = f" at step {s.step}" if steps_differ and s.step is not None else ""
            listing.append(f"rank {r}: {what}{took}{at}")
        rhythm = (
            f" ({v.stuck_s / v.step_s:.0f}x its {v.step_s * 1000:.1f} ms median step)"
            if v.step_s
            else ""
        )
        where = f" in {origin.phase}" if origin.phase else ""
        return Flag(
            detector=self.HUNG,
            run=run,
            rank=v.origin,
            metric=None,
            step=origin.step,
            t=origin.seen,
            severity="critical",
            summary=f"run {run} hung at step {origin.step}: no step for {v.stuck_s:.1f}s"
            f"{rhythm}; origin rank {v.origin}{where}; " + ", ".join(listing),
            evidence=evidence(v.stuck_s, v.step_s, v.threshold_s, None, **extra),
            description=self._stacks(state, v.origin),
        )

    def _stacks(self, state: _Run, origin: int) -> str:
        """The stacks captured since the ranks last stepped, the origin's first, bounded."""
        room = self.params.stack_chars
        parts = []
        for r in [origin, *sorted(r for r in state.ranks if r != origin)]:
            s = state.ranks[r]
            if not s.stack or s.stack_at < s.step_moved or room <= 0:
                continue
            head = f"rank {r} ({s.phase or 'phase unknown'}):\n"
            keep = room - len(head) - 1
            if keep < 80:  # no room left for a frame worth reading
                break
            body = s.stack.rstrip("\n")[-keep:] + "\n"
            parts.append(head + body)
            room -= len(head) + len(body)
        return "".join(parts).rstrip("\n")

    def _forget(self, run: str, state: _Run) -> None:
        # Forgotten, not cleared: no cleared flag (their alerts resolve on the engine's
        # timeout), and a return of the run starts afresh.
        del self._runs[run]
        self._forgotten.append(run)
        self._episodes.end((self.HUNG, run))
        for node in {s.node for s in state.ranks.values() if s.node}:
            self._episodes.end((self.NODE_LOST, run, node))
        for rank in state.ranks:
            self._episodes.end((self.DEAD, run, rank))
            self._episodes.end((self.EXITED, run, rank))


def _staleness(known: dict[int, float | None]) -> dict[int, float]:
    """Seconds each rank's newest news is older than the freshest rank's (0.0 where the
    time its news stands for is unknown)."""
    times = [t for t in known.values() if t is not None]
    if not times:
        return dict.fromkeys(known, 0.0)
    freshest = max(times)
    return {r: 0.0 if t is None else freshest - t for r, t in known.items()}


def _behind(steps: dict[int, int | None]) -> set[int]:
    """The ranks whose step is behind every other rank's (at least two ranks stepping).

    In lockstep data parallelism a hung job's waiting ranks are never behind its origin:
    the step the origin did not finish is one they could not finish without it either,
    unless the origin passed its collectives and stopped after them (a checkpoint, an extra
    collective of its own). One rank behind all the others is that origin. Equal steps
    say nothing; neither does one rank ahead of the rest (a rank that logs more often)."""
    known = {r: s for r, s in steps.items() if s is not None}
    out = set()
    for rank, step in known.items():
        others = [s for r, s in known.items() if r != rank]
        if others and step < min(others):
            out.add(rank)
    return out


def _code(phase: str | None) -> float | None:
    return vocab.PHASE_CODES.get(phase) if phase is not None else None
