"""The dashboard's pure parts: run rows, rank grid, incidents, chart columns, the hub."""

from __future__ import annotations

import asyncio
import math

import pytest

from query.dashboard.hub import UpdateHub, parse_message, sse_frame
from query.dashboard.shaping import (
    alert_incidents,
    chart_line,
    check_matchers,
    display_state,
    glob_filter,
    rank_grid,
    run_row,
    silence_matchers,
    step_rate,
)
from query.reader import RankLiveness, RunInfo
from stepstream.contract import Alert
from stepstream.keys import RedisKeys


def alert(rule: str, status: str = "firing", rank: int | None = 1, t: float = 10.0) -> Alert:
    return Alert(
        fingerprint=f"{rule}-{rank}",
        rule=rule,
        status=status,  # type: ignore[arg-type]
        run="r",
        rank=rank,
        metric="loss",
        step=int(t),
        t=t,
        raised_at=t,
        evidence={"value": math.nan, "threshold": 1.0},
    )


def test_glob_filter_by_glob_or_substring() -> None:
    names = ["loss", "grad/norm/a", "grad/norm/b", "grad/max", "lr"]
    assert glob_filter(names, "grad/norm/*") == ["grad/norm/a", "grad/norm/b"]
    assert glob_filter(names, "loss, lr") == ["loss", "lr"]
    assert glob_filter(names, "norm") == ["grad/norm/a", "grad/norm/b"]
    assert glob_filter(names, "") == names


def test_step_rate_from_the_time_index() -> None:
    assert step_rate([(10, 100.0), (20, 102.0), (30, 104.0)]) == pytest.approx(5.0)
    assert step_rate([(10, 100.0)]) is None
    assert step_rate([(10, 100.0), (10, 101.0)]) is None


def test_display_state_live_silent_finished() -> None:
    ranks = [RankLiveness(rank=0, t=1000.0, status="running")]
    running = RunInfo(run="r", last_activity=1000.0, world=1, state="running")
    assert display_state(running, ranks, now=1005.0) == "live"
    assert display_state(running, ranks, now=1031.0) == "silent"
    done = running.model_copy(update={"state": "finished"})
    assert display_state(done, ranks, now=5000.0) == "finished"


def test_run_row_newest_alert_first_and_nodes() -> None:
    ranks = [
        RankLiveness(rank=0, node="b", step=7, t=1000.0, status="running"),
        RankLiveness(rank=1, node="a", step=9, t=1000.0, status="running"),
    ]
    info = RunInfo(run="r", last_activity=1000.0, world=2, state="running")
    row = run_row(info, ranks, [alert("spike", t=5), alert("nonfinite", t=9)], [], 1001.0)
    assert row["nodes"] == ["a", "b"] and row["step"] == 9 and row["state"] == "live"
    assert [a["rule"] for a in row["alerts"]] == ["nonfinite", "spike"]
    assert row["alerts"][0]["evidence"]["value"] == "NaN"  # JSON has no NaN


def test_rank_grid_highlights_dead_hung_straggling_and_stale() -> None:
    ranks = [
        RankLiveness(rank=0, node="n1", step=100, age_s=0.5, status="running"),
        RankLiveness(rank=1, node="n1", step=90, age_s=0.5, status="running"),
        RankLiveness(rank=2, node="n0", step=50, age_s=45.0, status="running"),
        RankLiveness(rank=3, node="n0", step=100, age_s=45.0, status="closing"),
    ]
    active = [alert("straggler", rank=1), alert("dead_rank", rank=2), alert("hung_rank", rank=0)]
    grid = rank_grid(ranks, active, stale_after_s=30.0)
    by_rank = {row["rank"]: row for row in grid}
    assert [row["rank"] for row in grid] == [2, 3, 0, 1]  # by node, then rank
    assert by_rank[0]["problems"] == ["hung"]
    assert by_rank[1]["problems"] == ["straggler"] and by_rank[1]["lag"] == 10
    assert by_rank[2]["problems"] == ["dead", "stale"]
    assert by_rank[3]["problems"] == []  # closed cleanly: old heartbeat is no problem


def test_incidents_take_the_newest_state_and_the_firing_step() -> None:
    history = [alert("nonfinite", t=60), alert("nonfinite", "resolved", t=61)]
    (inc,) = alert_incidents(history, silenced=set())
    assert inc["state"] == "resolved" and inc["fired_step"] == 60 and not inc["silenced"]
    assert [t["status"] for t in inc["transitions"]] == ["firing", "resolved"]
    (muted,) = alert_incidents(history[:1], silenced={"nonfinite-1"})
    assert muted["silenced"] and muted["state"] == "firing"


def test_chart_line_downsamples_but_keeps_every_nonfinite_point() -> None:
    xs = list(range(10_000))
    ys = [math.sin(x / 100) for x in xs]
    ys[5000] = math.nan
    ys[7000] = math.inf
    line = chart_line(3, xs, ys, 200, "minmax")
    assert line.rank == 3 and line.stored == 10_000
    assert len(line.x) <= 202
    assert "NaN" in line.y and "Infinity" in line.y
    assert line.x[line.y.index("NaN")] == 5000
    whole = chart_line(0, [1, 2], [0.5, -math.inf], 200, "lttb")
    assert whole.y == [0.5, "-Infinity"]


def test_silence_matchers_and_their_check() -> None:
    assert silence_matchers(alert("nonfinite")) == {"run": "r", "rule": "nonfinite", "rank": "1"}
    assert silence_matchers(alert("plateau", rank=None)) == {"run": "r", "rule": "plateau"}
    assert check_matchers({"rule": "spike*"}) == {"rule": "spike*"}
    for bad in ({}, {"bad label": "x"}, {"rule": ""}, {"rule": "x" * 300}):
        with pytest.raises(ValueError):
            check_matchers(bad)


def test_parse_message_knows_both_channels() -> None:
    keys = RedisKeys("p")
    assert parse_message(keys, keys.updates_channel("a.b"), "{}") == ("update", "a.b", "{}")
    assert parse_message(keys, keys.alerts_channel("a"), "x") == ("alert", "a", "x")
    assert parse_message(keys, "other:channel", "x") is None
    assert sse_frame("update", '{"a":1}') == b'event: update\ndata: {"a":1}\n\n'


def test_hub_fans_out_by_run_and_flags_overflow() -> None:
    async def go() -> None:
        hub = UpdateHub(lambda: None, RedisKeys())
        one, every, other = hub.listen("a"), hub.listen(None), hub.listen("b")
        hub.publish("update", "a", "1")
        assert one.queue.get_nowait() == ("update", "1")
        assert every.queue.get_nowait() == ("update", "1")
        assert other.queue.empty()
        for i in range(one.queue.maxsize + 1):
            hub.publish("update", "a", str(i))
        assert one.overflowed and not other.overflowed
        hub.forget(one)
        assert hub.listeners == 2

    asyncio.run(go())


def test_pending_alerts_are_counted_apart_and_mark_no_rank() -> None:
    ranks = [RankLiveness(rank=1, node="a", step=9, age_s=0.5, status="running")]
    info = RunInfo(run="r", last_activity=1000.0, world=2, state="running")
    open_ = [alert("spike", t=5), alert("dead_rank", "pending", t=9)]
    row = run_row(info, ranks, open_, [], 1001.0)
    assert (row["firing"], row["pending"]) == (1, 1)
    assert [(a["rule"], a["status"]) for a in row["alerts"]] == [
        ("dead_rank", "pending"),
        ("spike", "firing"),
    ]
    # A pending dead rank may yet be withdrawn: the grid does not call the rank dead.
    assert rank_grid(ranks, open_[1:], stale_after_s=30.0)[0]["problems"] == []


def test_a_pending_incident_shows_pending_since_its_start_then_firing() -> None:
    pending = alert("loss-high", "pending", t=60).model_copy(update={"active_since": 60.0})
    (inc,) = alert_incidents([pending], silenced=set())
    assert (inc["state"], inc["active_since"], inc["fired_step"]) == ("pending", 60.0, 60)
    fired = alert("loss-high", t=63).model_copy(update={"active_since": 60.0})
    (inc,) = alert_incidents([pending, fired], silenced=set())
    assert (inc["state"], inc["fired_step"]) == ("firing", 63)
    assert [t["status"] for t in inc["transitions"]] == ["pending", "firing"]
