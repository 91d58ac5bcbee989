"""A node that goes away is one incident: the rule (`processors.detectors.nodes`), the
liveness detector and stage 2 that apply it, and the inhibition of its ranks' alerts."""

from __future__ import annotations

from collections.abc import Callable

from processors.alerting.engine import AlertEngine
from processors.alerting.rules import parse_rules
from processors.detectors.liveness import LivenessDetector, LivenessParams
from processors.detectors.nodes import WITNESS_WAIT_DEAD_WINDOWS, RankView, judge_nodes
from processors.flags import Flag
from processors.run_stage import RunStage
from stepstream import vocabulary as vocab
from stepstream.contract import Alert, RankSummary

NODES = {0: "a", 1: "a", 2: "b", 3: "b"}


def views(seen: dict[int, float], **kw: object) -> dict[int, RankView]:
    return {r: RankView(NODES[r], t, **kw) for r, t in seen.items()}  # type: ignore[arg-type]


def test_every_rank_of_a_node_silent_together_is_a_lost_node() -> None:
    v = judge_nodes(views({0: 10.0, 1: 10.0, 2: 5.0, 3: 5.4}), now=10.0, dead_s=2.5, window_s=2.5)
    assert v.lost == {"b": [2, 3]}
    assert v.waiting == set()


def test_one_dead_rank_of_a_node_is_not_a_lost_node() -> None:
    # rank 3 keeps reporting: once it spoke past the window, rank 2 is a dead rank alone
    v = judge_nodes(views({0: 10.0, 1: 10.0, 2: 5.0, 3: 10.0}), now=10.0, dead_s=2.5, window_s=2.5)
    assert v.lost == {}
    assert v.waiting == set()


def test_a_dead_rank_waits_while_its_node_peer_spoke_within_the_window() -> None:
    v = judge_nodes(views({0: 8.0, 1: 8.0, 2: 5.0, 3: 7.0}), now=8.0, dead_s=2.5, window_s=2.5)
    assert v.lost == {}
    assert v.waiting == {2}


def test_a_dead_rank_of_a_single_host_job_does_not_wait_for_a_node_verdict() -> None:
    # Every rank on host "a": the node is never judged lost (no other node witnesses it),
    # so rank 2 is dead as soon as its own silence is, though its peers spoke within the
    # window (they send once a second: waiting for their next word cost up to that).
    one_host = {r: RankView("a", t) for r, t in {0: 7.0, 1: 7.0, 2: 5.0}.items()}
    v = judge_nodes(one_host, now=8.0, dead_s=2.5, window_s=2.5)
    assert v.lost == {} and v.waiting == set()
    # A rank of another node, even one closed, changes that only while it is open.
    two_hosts = {**one_host, 3: RankView("b", 8.0)}
    assert judge_nodes(two_hosts, now=8.0, dead_s=2.5, window_s=2.5).waiting == {2}
    two_hosts[3] = RankView("b", 8.0, closed=True)
    assert judge_nodes(two_hosts, now=8.0, dead_s=2.5, window_s=2.5).waiting == set()


def test_dead_ranks_wait_while_a_node_peers_silence_is_not_witnessed_yet() -> None:
    # Node b went at 5: rank 3's partition is read past it, rank 2's not yet. Rank 3 alone
    # would page a dead_rank ahead of the node_lost (CI's multinode run); it waits instead.
    seen = views({0: 10.0, 1: 10.0, 2: 5.0, 3: 5.2})
    seen[2] = RankView("b", 5.0, witnessed=False)
    v = judge_nodes(seen, now=10.0, dead_s=2.5, window_s=2.5)
    assert v.lost == {}
    assert v.waiting == {2, 3}
    # Once rank 2's silence is witnessed too, the node is lost.
    seen[2] = RankView("b", 5.0)
    assert judge_nodes(seen, now=10.5, dead_s=2.5, window_s=2.5).lost == {"b": [2, 3]}
    # A partition that stays unread hides nothing for good: past the wait, rank 3 is judged
    # alone (its dead_rank comes; rank 2's waits for its own witness in the detector).
    seen[2] = RankView("b", 5.0, witnessed=False)
    late = 5.2 + WITNESS_WAIT_DEAD_WINDOWS * 2.5
    assert judge_nodes(seen, now=late, dead_s=2.5, window_s=2.5).waiting == set()


def test_last_words_are_compared_in_the_nodes_own_clock_not_by_arrival() -> None:
    # Rank 2's partition lags 3 s behind rank 3's in the processor: by arrival they fell
    # silent 3 s apart (more than the window), but both said their last words at 100.
    lagged = {
        0: RankView("a", 12.0, said=111.9),
        1: RankView("a", 12.0, said=111.9),
        2: RankView("b", 5.0, said=100.0),
        3: RankView("b", 8.0, said=100.1),
    }
    assert judge_nodes(lagged, now=10.0, dead_s=2.5, window_s=1.25).lost == {}
    assert judge_nodes(lagged, now=10.0, dead_s=2.5, window_s=1.25).waiting == {2}
    assert judge_nodes(lagged, now=12.0, dead_s=2.5, window_s=1.25).lost == {"b": [2, 3]}
    # and the other way: arriving together but said 10 s apart are separate deaths
    apart = {**lagged, 2: RankView("b", 7.0, said=90.0), 3: RankView("b", 7.0, said=100.0)}
    assert judge_nodes(apart, now=12.0, dead_s=2.5, window_s=1.25).lost == {}


def test_a_rank_that_said_it_crashed_does_not_wait_for_its_node() -> None:
    seen = views({0: 8.0, 1: 8.0, 2: 5.0, 3: 7.0})
    seen[2] = RankView("b", 5.0, crashed=True)
    assert judge_nodes(seen, now=8.0, dead_s=2.5, window_s=2.5).waiting == set()


def test_ranks_dying_far_apart_are_separate_faults() -> None:
    v = judge_nodes(views({0: 30.0, 1: 30.0, 2: 5.0, 3: 20.0}), now=30.0, dead_s=2.5, window_s=2.5)
    assert v.lost == {}


def test_a_clean_finish_or_a_reported_crash_is_not_a_lost_node() -> None:
    seen = {0: 10.0, 1: 10.0, 2: 5.0, 3: 5.0}
    closed = views(seen)
    closed[3] = RankView("b", 5.0, closed=True)
    assert judge_nodes(closed, 10.0, 2.5, 2.5).lost == {}
    crashed = views(seen)
    crashed[2] = RankView("b", 5.0, crashed=True)
    assert judge_nodes(crashed, 10.0, 2.5, 2.5).lost == {}


def test_a_single_rank_node_or_a_silent_run_is_not_a_lost_node() -> None:
    single = {0: RankView("a", 10.0), 1: RankView("b", 5.0)}
    assert judge_nodes(single, 10.0, 2.5, 2.5).lost == {}
    everything = judge_nodes(views({0: 5.0, 1: 5.0, 2: 5.0, 3: 5.0}), 10.0, 2.5, 2.5)
    assert everything.lost == {}
    nameless = {r: RankView("", 5.0 if r >= 2 else 10.0) for r in range(4)}
    assert judge_nodes(nameless, 10.0, 2.5, 2.5).lost == {}


def drive(
    d: LivenessDetector, until: float, alive: Callable[[int, float], bool], start: float = 0.0
) -> list[Flag]:
    """Ranks 0-3 on nodes a, a, b, b beat every 0.2 s while `alive(rank, now)`."""
    flags: list[Flag] = []
    now = start
    while now < until:
        for rank in range(4):
            if alive(rank, now):
                flags += d.seen("r", rank, 4, int(now * 10), now, "running", node=NODES[rank])
        flags += d.tick(now + 0.1)
        now = round(now + 0.2, 6)
    return flags


def test_liveness_raises_one_node_lost_first_then_dead_ranks_labelled_with_the_node() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=0.2))
    # rank 2 falls silent at 2.0, rank 3 at 2.3 (the dead window is 0.5 s)
    flags = drive(d, 5.0, lambda r, now: r < 2 or now < 2.0 + 0.3 * (r - 2))
    opened = [f for f in flags if not f.cleared]
    assert [f.detector for f in opened] == [vocab.NODE_LOST, vocab.DEAD_RANK, vocab.DEAD_RANK]
    lost = opened[0]
    assert lost.labels == {"node": "b"} and lost.rank is None
    assert lost.affected == ("rank 2", "rank 3")
    assert "node b" in lost.summary and "ranks 2, 3" in lost.summary
    assert {f.rank for f in opened[1:]} == {2, 3}
    assert all(f.labels == {"node": "b"} for f in opened[1:])
    # the node comes back: the node's alert and its ranks' clear
    back = drive(d, 7.0, lambda r, now: True, start=5.0)
    assert sorted((f.detector, f.rank) for f in back if f.cleared) == [
        (vocab.DEAD_RANK, 2),
        (vocab.DEAD_RANK, 3),
        (vocab.NODE_LOST, None),
    ]
    assert all(f.cleared for f in back)


def test_liveness_one_dead_rank_on_a_live_node_is_a_dead_rank_only() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=0.2))
    flags = drive(d, 5.0, lambda r, now: r != 2 or now < 2.0)
    assert [(f.detector, f.rank) for f in flags] == [(vocab.DEAD_RANK, 2)]
    dead = flags[0]
    # silent 0.5 s is dead; it waited for its node's verdict, at most the window (0.5 s)
    # and a beat more
    assert 0.5 <= dead.evidence["value"] <= 0.5 + 0.5 + 0.2  # type: ignore[operator]


def test_liveness_a_node_whose_ranks_close_cleanly_is_not_lost() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=0.2))
    flags: list[Flag] = []
    now = 0.0
    while now < 5.0:
        for rank in range(4):
            if rank < 2 or now < 2.0:
                flags += d.seen("r", rank, 4, int(now * 10), now, "running", node=NODES[rank])
            elif now < 2.2:
                flags += d.seen("r", rank, 4, 20, now, vocab.CLOSING, node=NODES[rank])
        flags += d.tick(now + 0.1)
        now = round(now + 0.2, 6)
    assert [f.detector for f in flags if f.detector in (vocab.NODE_LOST, vocab.DEAD_RANK)] == []


def summary(rank: int, step: int) -> RankSummary:
    return RankSummary(
        run="r", rank=rank, world=4, node=NODES[rank], last_step=step, status="running"
    )


def test_stage_two_and_the_engine_page_once_for_a_lost_node() -> None:
    stage = RunStage(heartbeat_interval_s=0.2, clock=lambda: 0.0)
    engine = AlertEngine(parse_rules("rules: []\n"), clock=lambda: 0.0)
    alerts: list[Alert] = []
    now = 0.0
    while now < 5.0:
        for rank in range(4):
            if rank < 2 or now < 2.0:
                alerts += stage.process(summary(rank, int(now * 10)), now).alerts
        alerts += stage.tick(now + 0.1)
        now = round(now + 0.2, 6)
    transitions = [a for flag in alerts for a in engine.on_finding(flag)]
    firing = [a for a in transitions if a.status == "firing"]
    notified = [a for a in firing if a.suppressed_by is None]
    assert [a.rule for a in notified] == [vocab.NODE_LOST]
    assert notified[0].labels.get("node") == "b"
    dead = [a for a in firing if a.rule == vocab.DEAD_RANK]
    assert len(dead) == 1  # one incident for the node's ranks...
    assert dead[0].suppressed_by == f"inhibited:{vocab.NODE_LOST}"  # ...muted by the node's


def test_a_lost_node_inhibits_its_ranks_and_the_runs_hang_only() -> None:
    from processors.alerting.inhibition import inhibited_by

    lost = {"rule": vocab.NODE_LOST, "run": "r", "node": "b"}
    dead_b = {"rule": vocab.DEAD_RANK, "run": "r", "rank": "2", "node": "b"}
    dead_a = {"rule": vocab.DEAD_RANK, "run": "r", "rank": "0", "node": "a"}
    hung = {"rule": vocab.HUNG_RANK, "run": "r", "rank": "0", "node": "a"}
    assert inhibited_by(dead_b, [lost]) is lost
    assert inhibited_by(dead_a, [lost]) is None  # a dead rank elsewhere still pages
    assert inhibited_by(hung, [lost]) is lost  # the survivors wait in the collective
    assert inhibited_by({**dead_b, "run": "other"}, [lost]) is None
    assert inhibited_by({"rule": "nonfinite", "run": "r", "node": "b"}, [lost]) is None


def test_a_run_forgotten_by_stage_two_leaves_no_incident_to_swallow_new_flags() -> None:
    stage = RunStage(heartbeat_interval_s=0.2, clock=lambda: 0.0)

    def lose_node_b(start: float) -> list[Alert]:
        alerts: list[Alert] = []
        now = start
        while now < start + 3.0:
            for rank in range(4):
                if rank < 2 or now < start + 1.0:
                    alerts += stage.process(summary(rank, int(now * 10)), now).alerts
            alerts += stage.tick(now + 0.1)
            now = round(now + 0.2, 6)
        return [a for a in alerts if a.rule == vocab.NODE_LOST and a.status == "firing"]

    assert len(lose_node_b(0.0)) == 1
    # the whole run goes quiet (its partition moved away, or the job stopped): liveness
    # forgets it without cleared flags, and its open incident must go with it
    stage.tick(30.0)
    assert len(lose_node_b(100.0)) == 1  # a fresh incident, not one swallowed by the old
    stage.forget(["r"])  # the partition came back after another worker held it
    assert len(lose_node_b(200.0)) == 1


def test_a_processor_that_hears_every_rank_stop_raises_nothing() -> None:
    # The processor is cut off from the broker (or stalls): nothing arrives from any rank.
    # Node b's ranks were last heard 0.6 s before node a's (one heartbeat apart at most):
    # at the moment b's are a dead window silent, a's still look alive. No witness was
    # heard after b fell silent, so neither a lost node nor a dead rank is declared.
    interval = 0.5
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=interval))
    flags: list[Flag] = []
    now = 0.0
    while now < 12.0:
        for rank in range(4):
            stops = 5.0 if rank >= 2 else 5.6
            if now < stops:
                flags += d.seen("r", rank, 4, int(now * 10), now, "running", node=NODES[rank])
        flags += d.tick(now + 0.05)
        now = round(now + 0.1 if now < 6.0 else now + interval, 6)
    assert [(f.detector, f.rank) for f in flags] == []
    unwitnessed = {r: RankView(NODES[r], t, witnessed=r < 2) for r, t in views_at().items()}
    assert judge_nodes(unwitnessed, 6.3, 1.25, 1.25).lost == {}
    assert judge_nodes(views(views_at()), 6.3, 1.25, 1.25).lost == {"b": [2, 3]}


def views_at() -> dict[int, float]:
    return {0: 5.6, 1: 5.6, 2: 5.0, 3: 5.0}


def drive_marked(
    d: LivenessDetector,
    until: float,
    heard: Callable[[int, float], bool],
    read: Callable[[int, float], bool],
    start: float = 0.0,
) -> list[Flag]:
    """Ranks r on telemetry partition r, each heard every 0.1 s while `heard(r, now)`;
    stage 1 marks partition p read every 0.5 s while `read(p, now)`."""
    flags: list[Flag] = []
    now = start
    while now < until:
        for rank in range(4):
            if heard(rank, now):
                flags += d.seen(
                    "r", rank, 4, int(now * 10), now, "running", node=NODES[rank], partition=rank
                )
        if round(now * 10) % 5 == 0:
            d.partitions_read({p: 0.0 for p in range(4) if read(p, now)}, now, now - 0.05)
        flags += d.tick(now + 0.05)
        now = round(now + 0.1, 6)
    return flags


def test_ranks_whose_partitions_are_not_read_are_not_dead_while_their_peers_report() -> None:
    # Node b's ranks are read by a stage-1 worker cut off from the broker: their summaries
    # and their partitions' read marks stop; node a's go on (another worker reads them).
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=0.5))
    flags = drive_marked(
        d, 12.0, lambda r, now: r < 2 or now < 5.0, lambda p, now: p < 2 or now < 5.0
    )
    assert flags == []
    # Read again (the partitions moved to a worker that reads them), still silent: the
    # ranks themselves are gone.
    flags = drive_marked(d, 16.0, lambda r, now: r < 2, lambda p, now: True, start=12.0)
    assert [(f.detector, f.rank) for f in flags if not f.cleared][:1] == [(vocab.NODE_LOST, None)]


def test_a_rank_whose_partition_is_read_is_dead_in_the_dead_window() -> None:
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=0.5))
    flags = drive_marked(d, 8.0, lambda r, now: r != 3 or now < 5.0, lambda p, now: True)
    assert [(f.detector, f.rank) for f in flags] == [(vocab.DEAD_RANK, 3)]
    assert flags[0].evidence["value"] <= 1.25 + 0.5 + 0.2  # type: ignore[operator]


def test_a_rank_on_a_lagging_partition_is_not_dead_for_the_lag() -> None:
    # Rank 3's partition is read 4 s behind the broker (a loaded stage 1): its summaries
    # stop arriving for that long, but it is not silent, its news is late.
    interval = 0.5
    d = LivenessDetector(LivenessParams(heartbeat_interval_s=interval))
    flags: list[Flag] = []
    now = 0.0
    while now < 12.0:
        lagging = 5.0 <= now < 9.0
        for rank in range(4):
            if rank != 3 or not lagging:
                flags += d.seen("r", rank, 4, int(now * 10), now, node=NODES[rank], partition=rank)
        if round(now * 10) % 5 == 0:
            ages = {p: (now - 5.0 if lagging and p == 3 else 0.0) for p in range(4)}
            d.partitions_read(ages, now, now)
        flags += d.tick(now + 0.05)
        now = round(now + 0.1, 6)
    assert flags == []
