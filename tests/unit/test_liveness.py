"""Liveness (stage 2): clean exits are finished, never dead; a rank that exits while its
peers go on is ``rank_exited`` after the grace; hangs are judged against the job's rhythm
and name the rank outside the collective; the run's state from its ranks' statuses."""

from __future__ import annotations

from processors.detectors.liveness import LivenessDetector, LivenessParams
from processors.flags import Flag
from processors.run_stage import RunStage
from processors.series_stage import SeriesStage
from stepstream import vocabulary as vocab
from stepstream.contract import Batch, RankSummary, Record, RecordKind, StepPoint


def drive(
    d: LivenessDetector,
    until: float,
    beat: object,
    dt: float = 0.2,
    start: float = 0.0,
) -> list[Flag]:
    """Call `beat(now)` -> [(rank, step, status, phase, phase_s, stack)] every `dt` and
    tick after each; every flag raised."""
    flags: list[Flag] = []
    now = start
    while now < until:
        for rank, step, status, phase, phase_s, stack in beat(now):  # type: ignore[operator]
            flags += d.seen(
                "r", rank, 2 if rank < 2 else 3, step, now, status, phase, phase_s, stack
            )
        flags += d.tick(now + dt / 2)
        now = round(now + dt, 6)
    return flags


def test_staggered_clean_exits_raise_nothing_and_finish_the_run() -> None:
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int | None, str, None, None, None]]:
        out = []
        for rank, closes_at in ((0, 40.0), (1, 12.0)):  # rank 1 closes 28 s before rank 0
            if now < closes_at:
                out.append((rank, int(now * 10), "running", None, None, None))
            elif now < closes_at + 0.3:
                out.append((rank, int(closes_at * 10), vocab.CLOSING, None, None, None))
        return out

    # rank 0 keeps stepping 28 s after rank 1 closed: within the 30 s grace
    assert drive(d, 45.0, beat) == []
    assert d.finished("r")
    assert drive(d, 80.0, beat, start=45.0) == []  # and is forgotten quietly


def test_a_closed_rank_is_never_dead_while_a_peer_flushes() -> None:
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int | None, str, None, None, None]]:
        # rank 0 still heard from (its close flushing) 10 s after rank 1 closed at t=1
        out = [(0, 5, vocab.CLOSING if now >= 11 else "running", None, None, None)]
        if now < 1.01:
            out.append((1, 5, vocab.CLOSING if now >= 1 else "running", None, None, None))
        return out

    flags = drive(d, 12.0, beat)
    assert flags == []


def test_a_crashed_silent_rank_is_still_dead() -> None:
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int | None, str, None, None, None]]:
        out = [(0, int(now * 10), "running", None, None, None)]
        if now < 2:
            out.append((1, int(now * 10), "running", None, None, None))
        return out

    flags = drive(d, 6.0, beat)
    assert [(f.detector, f.rank) for f in flags] == [("dead_rank", 1)]


def test_a_rank_that_dies_first_is_dead_though_its_peers_close_at_once() -> None:
    # gloo raises in the peers' next all-reduce: they close (or crash) milliseconds after
    # rank 2 dies, so no peer is alive when rank 2's silence reaches the dead bound.
    for peers_say in (vocab.CLOSING, vocab.CRASHED):
        d = LivenessDetector()

        def beat(now: float, say: str = peers_say) -> list[tuple[int, int, str, None, None, None]]:
            out = []
            if now < 3.0:  # rank 2's last batch left up to a flush interval before it died
                out.append((2, int(now * 10), "running", None, None, None))
            if now < 4.0:
                out += [(r, int(now * 10), "running", None, None, None) for r in (0, 1)]
            elif now < 4.3:
                out += [(r, 40, say, None, None, None) for r in (0, 1)]
            return out

        flags = drive(d, 12.0, beat)
        assert [(f.detector, f.rank) for f in flags] == [("dead_rank", 2)], peers_say


def test_ranks_that_end_together_but_close_seconds_apart_raise_nothing() -> None:
    # Rank 0's last heartbeat left 1 s before rank 1 closed, and its own close (a loaded
    # host, a final flush) takes 2.5 s more: it is closing, not dead.
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int, str, None, None, None]]:
        out = []
        if now < 4.0:
            out.append((0, int(now * 10), "running", None, None, None))
        elif 7.5 <= now < 7.8:
            out.append((0, 40, vocab.CLOSING, None, None, None))
        if now < 5.0:
            out.append((1, int(now * 10), "running", None, None, None))
        elif now < 5.3:
            out.append((1, 50, vocab.CLOSING, None, None, None))
        return out

    assert drive(d, 12.0, beat) == []
    assert d.finished("r")


def test_a_job_stopped_whole_has_no_dead_rank() -> None:
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int, str, None, None, None]]:
        if now < 3.0:  # the scheduler kills every rank at once: nobody says a word
            return [(r, int(now * 10), "running", None, None, None) for r in (0, 1, 2)]
        return []

    assert drive(d, 12.0, beat) == []


def test_rank_exited_fires_once_after_the_grace_and_clears_when_the_run_finishes() -> None:
    d = LivenessDetector(LivenessParams(exit_grace_s=30.0))

    def beat(now: float) -> list[tuple[int, int | None, str, None, None, None]]:
        out = []
        if now < 5:
            out.append((1, int(now * 10), "running", None, None, None))
        elif now < 5.3:
            out.append((1, 50, vocab.CLOSING, None, None, None))
        if now < 60:
            out.append((0, int(now * 10), "running", None, None, None))
        elif now < 60.3:
            out.append((0, 600, vocab.CLOSING, None, None, None))
        return out

    flags = drive(d, 70.0, beat)
    assert [(f.detector, f.rank, f.cleared) for f in flags] == [
        ("rank_exited", 1, False),
        ("rank_exited", 1, True),
    ]
    opened = flags[0]
    assert opened.severity == "warning"
    assert "exited" in opened.summary and "while the run continues" in opened.summary
    # fired at the first tick once rank 0 had stepped 30 s past the close at t=5
    assert opened.evidence["value"] is not None and 30.0 <= opened.evidence["value"] < 30.5
    assert flags[1].t >= 60.0


def sdk_beat(phases: dict[int, tuple[str, float]], hang_at: float, step_s: float = 0.01) -> object:
    """Ranks stepping every `step_s` (reports every 0.2 s) until `hang_at`, then each in
    phases[rank] = (phase, since when)."""

    def beat(now: float) -> list[tuple[int, int, str, str, float, str | None]]:
        out = []
        for rank, (phase, since) in phases.items():
            if now < hang_at:
                out.append((rank, int(now / step_s), "running", "data", 0.001, None))
            else:
                stack = f"File train.py, in {phase}_{rank}" if now - since > 2.5 else None
                out.append((rank, int(hang_at / step_s), "running", phase, now - since, stack))
        return out

    return beat


def test_a_data_loader_hang_names_the_rank_outside_the_collective_within_seconds() -> None:
    d = LivenessDetector()
    hang = 10.0
    beat = sdk_beat({0: ("backward", hang), 1: ("data", hang), 2: ("backward", hang)}, hang)
    flags = drive(d, 30.0, beat)
    assert [(f.detector, f.rank, f.cleared) for f in flags] == [("hung_rank", 1, False)]
    flag = flags[0]
    raised = flag.evidence["value"]
    # 20 x a 10 ms step is under the 5 s floor: hung 5 s after the last step moved
    assert raised is not None and 5.0 <= raised < 5.5
    assert flag.evidence["threshold"] == 5.0
    assert flag.evidence["baseline"] is not None and abs(flag.evidence["baseline"] - 0.01) < 2e-3
    assert flag.evidence["origin_phase"] == vocab.PHASE_CODES["data"]
    assert flag.evidence["phase_rank0"] == vocab.PHASE_CODES["backward"]
    assert flag.evidence["phase_rank2"] == vocab.PHASE_CODES["backward"]
    assert "origin rank 1 in data" in flag.summary and "rank 0: backward" in flag.summary
    assert flag.description.startswith("rank 1 (data):\nFile train.py, in data_1")
    assert "rank 0 (backward)" in flag.description


def test_a_checkpoint_gets_the_declared_floor_and_the_hang_clears_when_the_origin_steps() -> None:
    d = LivenessDetector()
    hang = 10.0
    beat = sdk_beat({0: ("checkpoint", hang), 1: ("backward", hang)}, hang)
    flags = drive(d, 45.0, beat)
    assert [(f.detector, f.rank) for f in flags] == [("hung_rank", 0)]
    assert flags[0].evidence["threshold"] == 30.0
    assert "origin rank 0 in checkpoint" in flags[0].summary
    # the other rank moving does not end it; the origin moving does
    assert d.seen("r", 1, 2, 5000, 45.0) == []
    cleared = d.seen("r", 0, 2, 5000, 45.2)
    assert [(f.detector, f.rank, f.cleared) for f in cleared] == [("hung_rank", 0, True)]


def test_a_rank_in_a_collective_its_peers_never_call_is_named_by_its_step() -> None:
    # Rank 2 enters an extra all-reduce after its backward (one rank syncing a metric the
    # others never sync): it still reports backward, like its peers waiting in the next
    # step's all-reduce, and its heartbeats even say it entered it a little later (their
    # delivery jitter is larger than a step). Its step, one behind theirs, names it.
    d = LivenessDetector()
    hang, step_s = 10.0, 0.01

    def beat(now: float) -> list[tuple[int, int, str, str, float, None]]:
        if now < hang:
            return [(r, int(now / step_s), "running", "data", 0.001, None) for r in (0, 1, 2)]
        done = int(hang / step_s)
        return [
            (0, done, "running", "backward", now - hang + 0.3, None),
            (1, done, "running", "backward", now - hang + 0.2, None),
            (2, done - 1, "running", "backward", now - hang, None),
        ]

    flags = drive(d, 25.0, beat)
    assert [(f.detector, f.rank, f.cleared) for f in flags] == [("hung_rank", 2, False)]
    assert "origin rank 2 in backward" in flags[0].summary
    assert f"rank 2: backward {flags[0].evidence['phase_s_rank2']:.1f}s at step 999" in (
        flags[0].summary
    )


def test_a_rank_stuck_in_a_long_forward_is_named_while_its_peers_wait() -> None:
    # Rank 0's forward runs a long compute op; ranks 1 and 2 wait in the all-reduce.
    d = LivenessDetector()
    hang = 10.0
    beat = sdk_beat({0: ("forward", hang), 1: ("backward", hang), 2: ("backward", hang)}, hang)
    flags = drive(d, 25.0, beat)
    assert [(f.detector, f.rank, f.cleared) for f in flags] == [("hung_rank", 0, False)]
    assert flags[0].evidence["origin_phase"] == vocab.PHASE_CODES["forward"]
    assert "origin rank 0 in forward" in flags[0].summary


def test_a_rank_ahead_of_the_others_does_not_make_them_origins() -> None:
    # Rank 0 logs every step, ranks 1 and 2 every 10 (their step lags): rank 1 blocked in
    # its data loader is still the origin, ranks behind only rank 0 are not.
    d = LivenessDetector()
    hang, step_s = 10.0, 0.01

    def beat(now: float) -> list[tuple[int, int, str, str, float, None]]:
        t = min(now, hang)
        dense, sparse = int(t / step_s), int(t / step_s) // 10 * 10 - 5
        if now < hang:
            return [(0, dense, "running", "data", 0.001, None)] + [
                (r, sparse, "running", "data", 0.001, None) for r in (1, 2)
            ]
        return [
            (0, dense, "running", "backward", now - hang, None),
            (1, sparse, "running", "data", now - hang, None),
            (2, sparse, "running", "backward", now - hang, None),
        ]

    flags = drive(d, 25.0, beat)
    assert [(f.detector, f.rank) for f in flags] == [("hung_rank", 1)]


def test_a_rank_whose_phase_keeps_changing_is_not_hung() -> None:
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int, str, str, float, None]]:
        step = int(min(now, 10.0) / 0.01)  # an evaluation without monitor.phase() from 10 s
        return [(r, step, "running", "forward", 0.05, None) for r in (0, 1)]

    assert drive(d, 40.0, beat) == []


def test_slow_steps_set_the_threshold_and_the_cap_bounds_it() -> None:
    d = LivenessDetector(LivenessParams(hung_after_s=60.0))

    def beat(now: float) -> list[tuple[int, int, str, None, None, None]]:
        step = int(min(now, 40.0) / 2.0)  # 2 s steps until t=40
        return [(r, step, "running", None, None, None) for r in (0, 1)]

    flags = drive(d, 100.0, beat)
    assert [(f.detector, f.evidence["threshold"]) for f in flags] == [("hung_rank", 40.0)]
    d2 = LivenessDetector(LivenessParams(hung_after_s=20.0))
    flags = drive(d2, 100.0, beat)
    assert [(f.detector, f.evidence["threshold"]) for f in flags] == [("hung_rank", 20.0)]


def test_run_state() -> None:
    assert vocab.run_state({0: "closing", 1: "closing"}, 2) == "finished"
    assert vocab.run_state({0: "closing"}, 2) == "running"
    assert vocab.run_state({0: "running", 1: "crashed"}, 2) == "crashed"
    assert vocab.run_state({0: None, 1: "starting"}, 2) == "starting"


def test_run_stage_passes_status_phase_and_stack_to_liveness() -> None:
    stage = RunStage()
    for i in range(60):
        now = i * 0.2
        for rank in (0, 1):
            stage.process(
                RankSummary(run="r", rank=rank, world=2, last_step=i * 20, status="running"),
                now,
            )
        stage.tick(now + 0.1)
    alerts = []
    for i in range(60, 120):
        now = i * 0.2
        for rank, phase in ((0, "forward"), (1, "backward")):
            summary = RankSummary(
                run="r",
                rank=rank,
                world=2,
                last_step=59 * 20,
                status="running",
                phase=phase,
                phase_s=now - 12.0,
                stack="File model.py, line 3, in forward" if rank == 0 else None,
            )
            alerts += stage.process(summary, now).alerts
        alerts += stage.tick(now + 0.1)
    assert [(a.rule, a.rank, a.status) for a in alerts] == [("hung_rank", 0, "firing")]
    assert alerts[0].description == "rank 0 (forward):\nFile model.py, line 3, in forward"


def test_a_job_that_hangs_in_its_first_seconds_is_judged_on_its_reported_step_times() -> None:
    # Two 5 ms-step ranks report once a second: the job reaches its hang after a single
    # summary each, too few arrivals for a rhythm. The step times they reported with it
    # give one, so the hang is reported after the 5 s floor, not the 120 s cap.
    stage = RunStage()
    step_s = 0.005
    for rank in (0, 1):
        points = [
            StepPoint(step=s, t=s * step_s, values={vocab.STEP_TIME.name: step_s})
            for s in range(200)
        ]
        summary = RankSummary(
            run="r", rank=rank, world=2, last_step=199 + rank, steps=points, status="running"
        )
        stage.process(summary, 1.0)
    alerts = []
    for i in range(6, 60):
        now = i * 0.2
        for rank in (0, 1):
            summary = RankSummary(
                run="r",
                rank=rank,
                world=2,
                last_step=199 + rank,
                status="running",
                phase="backward",
                phase_s=now - 1.0,
            )
            alerts += stage.process(summary, now).alerts
        alerts += stage.tick(now + 0.1) + stage.flush_steps(now + 0.1).alerts
    assert [(a.rule, a.rank, a.status) for a in alerts] == [("hung_rank", 0, "firing")]
    hung = alerts[0]
    assert hung.evidence["threshold"] == 5.0  # the floor: 20 x 5 ms is less
    assert hung.evidence["value"] is not None and hung.evidence["value"] < 5.5
    assert "its 5.0 ms median step" in hung.summary


def test_stage_1_reads_heartbeats_into_the_summary_and_the_window_update() -> None:
    stage = SeriesStage(window_steps=[5], window_seconds=[3.0], clock=lambda: 42.0)

    def beat(seq: int, status: str, phase: str, stack: str | None = None) -> Record:
        values = {
            vocab.HEARTBEAT_STEP: 7.0,
            vocab.HEARTBEAT_STATUS: vocab.STATUS_CODES[status],
            vocab.HEARTBEAT_PHASE: vocab.PHASE_CODES[phase],
            vocab.HEARTBEAT_PHASE_S: 3.5,
        }
        if stack:
            values[vocab.HEARTBEAT_STACK] = float(len(stack))
        return Record(
            seq=seq, t=41.0, step=7, kind=RecordKind.HEARTBEAT, values=values, text=stack or status
        )

    def batch(*records: Record) -> Batch:
        return Batch(run="r", rank=1, world=2, incarnation="i", records=list(records))

    out = stage.process(batch(beat(0, "running", "data", "File x.py, in load")))
    summary = out.summaries[0]
    assert (summary.status, summary.phase, summary.phase_s) == ("running", "data", 3.5)
    assert (summary.stack, summary.stack_t) == ("File x.py, in load", 41.0)
    assert [u.status for u in out.updates] == ["running"]  # a new status is stored
    out = stage.process(batch(beat(1, "running", "backward")))
    assert out.summaries[0].stack is None and out.updates == []  # nothing new to store
    out = stage.process(batch(beat(2, "closing", "outside")))
    assert out.summaries[0].status == "closing"
    assert [u.status for u in out.updates] == ["closing"]


def test_the_description_keeps_the_innermost_part_of_big_stacks_within_the_bound() -> None:
    d = LivenessDetector()
    big = "".join(f"  File x.py, line {i}, in f{i}\n" for i in range(2000))
    hang = 10.0

    def beat(now: float) -> list[tuple[int, int, str, str, float, str | None]]:
        if now < hang:
            return [(r, int(now * 100), "running", "data", 0.001, None) for r in (0, 1)]
        stuck = int(hang * 100)
        return [
            (0, stuck, "running", "data", now - hang, big),
            (1, stuck, "running", "backward", now - hang, big),
        ]

    flags = drive(d, 20.0, beat)
    assert [f.rank for f in flags] == [0]
    text = flags[0].description
    assert len(text) <= 4096
    assert text.startswith("rank 0 (data):\n") and text.endswith("in f1999")


def test_a_partition_in_handover_after_a_rebalance_is_not_a_dead_rank() -> None:
    # Ranks 0 and 1 beat every 0.2 s. A rebalance stops everything at t=5; when it ends at
    # t=7, rank 0's partition flows at once but rank 1's is still in handover until t=8.5.
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int | None, str, None, None, None]]:
        out = []
        if not 5.0 <= now < 7.0:
            out.append((0, int(now * 10), "running", None, None, None))
        if not 5.0 <= now < 8.5:
            out.append((1, int(now * 10), "running", None, None, None))
        return out

    flags = drive(d, 5.0, beat)
    d.pause()
    flags += drive(d, 7.0, beat, start=5.0)
    d.resume(7.0)
    flags += drive(d, 20.0, beat, start=7.0)
    assert flags == []


def test_a_rank_dead_across_a_rebalance_is_still_reported_after_the_grace() -> None:
    d = LivenessDetector()

    def beat(now: float) -> list[tuple[int, int | None, str, None, None, None]]:
        out = [(0, int(now * 10), "running", None, None, None)] if not 5 <= now < 7 else []
        if now < 4.0:  # rank 1 dies at t=4, before the rebalance
            out.append((1, int(now * 10), "running", None, None, None))
        return out

    flags = drive(d, 4.5, beat)
    d.pause()
    flags += drive(d, 7.0, beat, start=4.5)
    d.resume(7.0)
    flags += drive(d, 15.0, beat, start=7.0)
    dead = [f for f in flags if f.detector == vocab.DEAD_RANK and not f.cleared]
    assert [f.rank for f in dead] == [1]
    # silences count from the grace after the assignment: 7 + 2 + the 2.5 s dead window
    assert 11.4 <= dead[0].t + float(dead[0].summary.split("silent for ")[1].split("s")[0]) <= 11.8


def test_a_rank_never_heard_is_dead_after_the_grace_and_clears_at_its_first_words() -> None:
    d = LivenessDetector()  # never_heard_s = 30
    flags: list[Flag] = []
    for i in range(205):  # ranks 0 and 1 of a world of 3 report; rank 2 from t = 40 on
        now = i * 0.2
        for rank in (0, 1, 2) if now >= 40.0 else (0, 1):
            flags += d.seen("r", rank, 3, i, now, "running")
        flags += d.tick(now + 0.1)
        if now < 29.0:
            # ranks start seconds apart: within the grace nothing is judged
            assert flags == []
    raised = [f for f in flags if not f.cleared]
    assert [(f.detector, f.rank) for f in raised] == [("dead_rank", 2)]
    assert "never reported in 30s while 2 of its 3 ranks do" in raised[0].summary
    assert 30.0 <= raised[0].evidence["value"] < 30.5  # type: ignore[operator]
    cleared = [f for f in flags if f.cleared]
    assert [(f.detector, f.rank) for f in cleared] == [("dead_rank", 2)]
    assert "heard from at last" in cleared[0].summary


def test_a_job_that_instruments_rank_0_only_raises_nothing_for_the_others() -> None:
    d = LivenessDetector()
    flags = []
    for i in range(400):  # 80 s of rank 0 reporting a world of 8
        now = i * 0.2
        flags += d.seen("r", 0, 8, i, now, "running")
        flags += d.tick(now + 0.1)
    assert flags == []


def test_a_rank_reporting_once_a_second_has_its_rhythm_after_a_few_reports() -> None:
    # The SDK sends once a second: each report moves the step by ~100 steps. A hang 3 s in
    # is judged against that rhythm (the 5 s floor), not against the 120 s cap.
    d = LivenessDetector()
    hang = 3.0
    beat = sdk_beat({0: ("backward", hang), 1: ("data", hang)}, hang)
    flags = drive(d, 12.0, beat, dt=1.0)
    assert [(f.detector, f.rank) for f in flags] == [("hung_rank", 1)]
    assert flags[0].evidence["threshold"] == 5.0


def test_a_cold_owner_seeded_from_the_registry_reports_a_rank_that_died_before_the_move() -> None:
    from processors.detectors.liveness import KnownRank

    d = LivenessDetector()
    d.resume(100.0)  # a rebalance: silences count from the grace after it
    # The registry: rank 2 last spoke at t=95, before the move; rank 1 closed cleanly.
    known = [
        KnownRank(0, 99.5, 40, "a"),
        KnownRank(1, 96.0, 38, "a", vocab.CLOSING),
        KnownRank(2, 95.0, 37, "b"),
    ]
    assert d.seed("r", 3, known) == 3
    assert d.seed("r", 3, known) == 0  # once: what it heard itself is kept
    flags = []
    now = 100.0
    while now < 108.0:
        flags += d.seen("r", 0, 3, int(now), now, "running")  # rank 0 reports
        flags += d.tick(now + 0.1)
        now += 0.2
    assert [(f.detector, f.rank) for f in flags] == [("dead_rank", 2)]


def test_a_seeded_rank_that_speaks_is_not_dead() -> None:
    from processors.detectors.liveness import KnownRank

    d = LivenessDetector()
    d.resume(100.0)
    d.seed("r", 2, [KnownRank(0, 99.0, 10), KnownRank(1, 99.0, 10)])
    flags = []
    now = 100.0
    while now < 110.0:
        for rank in (0, 1):
            flags += d.seen("r", rank, 2, int(now), now, "running")
        flags += d.tick(now + 0.1)
        now += 0.2
    assert flags == []


def test_a_new_run_seeded_from_an_empty_registry_waits_its_own_grace_for_a_late_rank() -> None:
    # The worker has run for minutes (its last rebalance long ago); a new run's first
    # summary finds nothing in the registry. Ranks 0 and 2 speak first, rank 1 four seconds
    # later: that is a rank starting late, not one that never reported.
    d = LivenessDetector()
    d.resume(0.0)
    assert d.seed("r", 3, []) == 0
    flags: list[Flag] = []
    now = 200.0
    while now < 240.0:
        for rank in (0, 1, 2) if now >= 204.0 else (0, 2):
            flags += d.seen("r", rank, 3, int(now), now, "running")
        flags += d.tick(now + 0.1)
        now += 0.2
    assert flags == []


def test_a_rank_whose_news_lags_behind_its_peers_is_not_a_hang() -> None:
    # Rank 0 evaluates alone for 8 s (a declared phase) while ranks 1 and 2 wait in the
    # all-reduce; then all step again. Rank 1's partition lags 6 s behind the others: its
    # heartbeats arrive on time but say what it did 6 s ago ("backward 8 s at step 100")
    # while its peers already report step 160. It is behind in what was heard, not hung.
    d = LivenessDetector()
    step_s, lag = 0.1, 6.0
    eval_at, eval_s = 10.0, 8.0

    def state(t: float) -> tuple[int, str, float]:
        if t < eval_at:
            return int(t / step_s), "forward", 0.01
        if t < eval_at + eval_s:
            return int(eval_at / step_s), "backward", t - eval_at
        return int(eval_at / step_s) + int((t - eval_at - eval_s) / step_s), "forward", 0.01

    flags: list[Flag] = []
    now = 0.0
    while now < 40.0:
        for rank in (0, 1, 2):
            said = now - (lag if rank == 1 and now > 5.0 else 0.05)
            step, phase, phase_s = state(said)
            if rank == 0 and eval_at <= said < eval_at + eval_s:
                phase, phase_s = "eval", said - eval_at
            flags += d.seen("r", rank, 3, step, now, "running", phase, phase_s, said=said)
        flags += d.tick(now + 0.1)
        now = round(now + 0.2, 6)
    assert flags == []


def test_a_rank_reported_a_step_behind_the_rank_on_duty_is_not_the_hang() -> None:
    # Rank 0 checkpoints for 12 s after step 160 (a declared phase: the 30 s floor);
    # ranks 1 and 2 wait in the next all-reduce. Rank 1's record of step 160 was not
    # flushed before the wait began: its reports say step 159, one behind every peer.
    d = LivenessDetector()
    step_s, duty_at, duty_s = 0.1, 16.05, 12.0

    def beat(now: float) -> list[tuple[int, int, str, str, float, None]]:
        if now < duty_at:  # rank 1's newest record is always a step behind
            return [
                (r, int(now / step_s) - (r == 1), "running", "forward", 0.01, None)
                for r in (0, 1, 2)
            ]
        if now < duty_at + duty_s:
            waited = now - duty_at
            return [
                (0, 160, "running", "checkpoint", waited, None),
                (1, 159, "running", "backward", waited, None),
                (2, 160, "running", "backward", waited, None),
            ]
        moved = 161 + int((now - duty_at - duty_s) / step_s)
        return [(r, moved, "running", "forward", 0.01, None) for r in (0, 1, 2)]

    assert drive(d, 40.0, beat) == []


def test_the_end_of_a_duty_heard_before_the_waiting_ranks_moved_on_is_not_a_hang() -> None:
    # Rank 0 checkpoints for 12 s; ranks 1 and 2 wait in the all-reduce. Rank 0's report of
    # the checkpoint's end comes first; rank 2 sends once a second and its partition lags,
    # so for 1.5 s more it is still heard "in backward since 12 s, at step 160".
    d = LivenessDetector()
    step_s, duty_at, duty_s, late = 0.1, 16.05, 12.0, 1.5
    end = duty_at + duty_s

    def beat(now: float) -> list[tuple[int, int, str, str, float, None]]:
        if now < duty_at:
            return [(r, int(now / step_s), "running", "forward", 0.01, None) for r in (0, 1, 2)]
        moved = 161 + int(max(0.0, now - end) / step_s)
        rows = []
        for rank in (0, 1, 2):
            heard = now - (late if rank == 2 else 0.0)
            if heard >= end:
                rows.append((rank, moved, "running", "forward", 0.01, None))
            elif rank == 0:
                rows.append((0, 160, "running", "checkpoint", now - duty_at, None))
            else:
                rows.append((rank, 160, "running", "backward", heard - duty_at, None))
        return rows

    assert drive(d, 40.0, beat) == []


def test_a_rank_stuck_before_a_peer_began_its_duty_is_still_the_hang() -> None:
    # Rank 1 hangs in its data loader at 10 s; rank 0 begins an eval at 14 s (it logged
    # its step before the collective that now waits for rank 1): rank 1 is the origin.
    d = LivenessDetector()
    step_s, hang = 0.1, 10.0

    def beat(now: float) -> list[tuple[int, int, str, str, float, None]]:
        if now < hang:
            return [(r, int(now / step_s), "running", "forward", 0.01, None) for r in (0, 1, 2)]
        done = int(hang / step_s)
        eval_s = max(0.0, now - 14.0)
        return [
            (0, done, "running", "eval" if eval_s else "backward", eval_s or now - hang, None),
            (1, done - 1, "running", "data", now - hang, None),
            (2, done, "running", "backward", now - hang, None),
        ]

    flags = drive(d, 25.0, beat)
    assert [(f.detector, f.rank, f.cleared) for f in flags] == [("hung_rank", 1, False)]


def test_read_marks_come_four_times_a_heartbeat_within_a_workers_budget() -> None:
    from processors.detectors.liveness import READ_MARKS_RECEIVED_PER_S, read_mark_interval_s

    # The default 4 partitions: a quarter interval, so a mark adds at most 0.25 s to a
    # dead_rank's delay.
    assert read_mark_interval_s(1.0, 4) == 0.25
    assert read_mark_interval_s(0.5, 2) == 0.125
    # 16 partitions at a quarter second would send each stage-2 worker 64 marks a second.
    assert read_mark_interval_s(1.0, 16) == 16 / READ_MARKS_RECEIVED_PER_S == 0.8
    # Never slower than the heartbeat: the delay stays bounded by one interval.
    assert read_mark_interval_s(1.0, 64) == 1.0
