"""What the sink writes, planned without Redis."""

from __future__ import annotations

import json
import math

import pytest

from sinks.plan import SeriesLimits, WritePlan
from stepstream.contract import (
    Alert,
    Batch,
    CrossRankStats,
    CrossRankUpdate,
    Record,
    WindowStats,
    WindowUpdate,
)
from stepstream.errors import ConfigError
from stepstream.keys import RedisKeys, series_member
from stepstream.stored_stats import OpenWindowUpdate
from stepstream.window_values import code_field, metric_code, none_mask, unpack_window_values


def update(rank: int, loss: float, t: float) -> WindowUpdate:
    stats = WindowStats(count=1, mean=loss, min=loss, max=loss, last=loss)
    return WindowUpdate(
        run="r",
        rank=rank,
        world=2,
        node="n",
        step=3,
        t=t,
        latest={"loss": loss},
        windows={"50steps": {"loss": stats}},
    )


def test_later_updates_of_a_series_replace_earlier_in_one_hset() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    plan.add_window_update(update(0, 1.0, 10.0))
    plan.add_window_update(update(0, 2.0, 11.0))
    plan.add_window_update(update(1, math.nan, 12.0))
    latest = plan.hashes[keys.latest("r")]
    assert latest == {"0|loss": "2.0", "1|loss": "NaN"}
    value = plan.hashes[keys.window("r", "50steps")]["0|loss"]
    assert isinstance(value, bytes)
    (record,) = unpack_window_values([value])
    assert (record["rank"], record["code"]) == (0, metric_code("loss"))
    stats = record["stats"]
    assert stats[:6].tolist() == [1, 0, 2.0, 2.0, 2.0, 2.0]
    assert none_mask(stats)[6:].all() and not none_mask(stats)[:6].any()
    # The code table names it, written once per plan.
    assert plan.hashes[keys.metric_codes("r")] == {code_field(metric_code("loss")): "loss"}
    assert keys.metric_codes("r") in plan.expiring_keys()
    assert plan.run_activity == {"r": 12.0}
    assert json.loads(plan.hashes[keys.ranks("r")]["1"]) == {"node": "n", "step": 3, "t": 12.0}
    assert keys.window("r", "50steps") in plan.expiring_keys()


def test_firing_then_resolved_alert_leaves_no_active_entry() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    base = {"fingerprint": "f1", "rule": "nonfinite", "run": "r", "t": 1.0, "raised_at": 2.0}
    plan.add_alert(Alert(status="firing", **base))
    plan.add_alert(Alert(status="resolved", **base))
    # Both go through the dedup script in order, each with its own dedup field.
    assert [(a.status, a.dedup) for a in plan.alerts] == [
        ("firing", "f1|firing|1.0"),
        ("resolved", "f1|resolved|1.0"),
    ]
    assert plan.alerts[0].keys == (keys.alerts("r"), keys.alerts_seen("r"), keys.active_alerts("r"))
    assert plan.alerts[0].channel == keys.alerts_channel("r")
    assert plan.alerts[0].script_args()[:3] == ["f1|firing|1.0", "f1", "firing"]


def batch(rank: int, steps: range, t0: float = 100.0) -> Batch:
    return Batch(
        run="r",
        rank=rank,
        records=[
            Record(seq=s, t=t0 + s, step=s, values={"loss": 1.0 / (s + 1), "lr": 0.1})
            for s in steps
        ],
    )


def test_raw_points_go_by_step_coarse_and_time_with_trims() -> None:
    keys = RedisKeys()
    limits = SeriesLimits(
        max_points=5, decimate_every=10, coarse_max_points=3, time_horizon_s=2.0, time_max_points=4
    )
    plan = WritePlan(keys, limits)
    plan.add_batch(batch(0, range(0, 25)))
    write = plan.series[("r", 0, "loss")]
    assert len(write.by_step) == 25 and write.by_step[series_member(3, 3, 0.25)] == 3
    assert sorted(write.coarse.values()) == [0, 10, 20]
    assert write.by_time == {}  # stepped points are found by time via the index
    assert plan.time_index[("r", 0)]["3"] == 103_000.0 and len(plan.time_index[("r", 0)]) == 25
    assert plan.values == 50
    assert plan.sets[keys.series_index("r")] == {"0|loss", "0|lr"}
    cmds = plan.series_commands()
    step_key = keys.series("r", "step", 0, "loss")
    index_key = keys.time_index("r", 0)
    assert ("zremrangebyrank", (step_key, 0, -6)) in cmds
    assert ("zremrangebyscore", (index_key, "-inf", "(122000.0")) in cmds
    assert ("zremrangebyrank", (index_key, 0, -5)) in cmds
    assert set(keys.series_keys("r", 0, "loss")[:2]) <= set(plan.expiring_keys())
    assert index_key in plan.expiring_keys()


def test_points_without_step_go_by_time() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys, SeriesLimits(time_horizon_s=1.0, time_max_points=4))
    plan.add_batch(
        Batch(
            run="r",
            rank=2,
            records=[
                Record(seq=s, t=10.0 + s, kind="system", values={"gpu_util": 50.0 + s})
                for s in range(3)
            ],
        )
    )
    write = plan.series[("r", 2, "gpu_util")]
    assert write.by_step == {} and write.by_time == {
        series_member(None, 0, 50.0): 10_000.0,
        series_member(None, 1, 51.0): 11_000.0,
        series_member(None, 2, 52.0): 12_000.0,
    }
    time_key = keys.series("r", "time", 2, "gpu_util")
    assert ("zremrangebyscore", (time_key, "-inf", "(11000.0")) in plan.series_commands()
    assert plan.time_index == {}


def test_planning_the_same_messages_twice_plans_the_same_writes() -> None:
    once, twice = WritePlan(RedisKeys()), WritePlan(RedisKeys())
    once.add_batch(batch(1, range(10)))
    twice.add_batch(batch(1, range(10)))
    twice.add_batch(batch(1, range(10)))
    assert once.series_commands() == twice.series_commands()


def test_unsafe_window_name_rejects_the_update_and_changes_nothing() -> None:
    plan = WritePlan(RedisKeys())
    bad = update(0, 1.0, 1.0)
    bad.windows["x}y"] = bad.windows["50steps"]
    with pytest.raises(ConfigError):
        plan.add_window_update(bad)
    assert plan.is_empty() and plan.values == 0


def test_extra_stats_fields_survive_the_plan() -> None:
    plan = WritePlan(RedisKeys())
    up = update(0, 1.0, 1.0)
    # Stats a newer processor may add (p999, kurtosis) pass through without code here.
    raw = up.model_dump_json().replace('"count":1', '"count":2,"p999":0.5,"kurtosis":"NaN"')
    plan.add_window_update(OpenWindowUpdate.model_validate_json(raw))
    *_, stats = json.loads(plan.hashes[RedisKeys().window("r", "50steps")]["0|loss"])
    assert (stats[0], stats[-1]) == (2, {"p999": 0.5, "kurtosis": "NaN"})


def test_suppressed_alerts_are_stored_but_not_published() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    base = {"fingerprint": "f9", "rule": "spike", "run": "r", "t": 1.0, "raised_at": 2.0}
    plan.add_alert(Alert(status="firing", suppressed_by="silence:abc", **base))
    plan.add_alert(Alert(status="firing", **{**base, "fingerprint": "f10"}))
    assert [a.channel for a in plan.alerts] == ["", keys.alerts_channel("r")]
    assert [a.fingerprint for a in plan.alerts] == ["f9", "f10"]


def test_registry_adds_fresh_runs_drops_idle_ones_and_expires_with_the_retention() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    plan.add_window_update(update(0, 1.0, 1_000.0))
    plan.add_window_update(update(1, 1.0, 1_050.0))
    now, retention = 1_100.0, 500
    assert plan.registry_commands(now, retention) == [
        ("zadd", (keys.runs(), {"r": 1_050.0}), {"gt": True}),
        # exclusive: a run active exactly at the cutoff stays, as readers list it
        ("zremrangebyscore", (keys.runs(), "-inf", "(600.0")),
        ("expire", (keys.runs(), 500)),
    ]


def test_registry_does_not_list_again_a_run_replayed_after_its_retention() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    plan.add_batch(batch(0, range(3), t0=100.0))  # newest activity 102.0
    commands = plan.registry_commands(now=10_000.0, retention_s=1_000)
    assert [c[0] for c in commands] == ["zremrangebyscore", "expire"]
    assert commands[0] == ("zremrangebyscore", (keys.runs(), "-inf", "(9000.0"))
    # The per-run keys are still written (idempotent, and they expire again).
    assert keys.series("r", "step", 0, "loss") in plan.expiring_keys()
    # At the cutoff exactly, the run is still fresh.
    at_cutoff = plan.registry_commands(now=1_102.0, retention_s=1_000)
    assert at_cutoff[0] == ("zadd", (keys.runs(), {"r": 102.0}), {"gt": True})


def test_a_plan_without_run_activity_leaves_the_registry_alone() -> None:
    assert WritePlan(RedisKeys()).registry_commands(now=1.0, retention_s=10) == []


def test_crossrank_stats_and_quality_windows_go_to_their_hashes() -> None:
    keys = RedisKeys("p")
    plan = WritePlan(keys)
    plan.add_crossrank(
        CrossRankUpdate(
            run="r",
            step=7,
            t=70.0,
            world=2,
            stats={"loss": CrossRankStats(ranks=2, mean=1.5, min=1.0, max=2.0, argmin=0, argmax=1)},
            quality={"50steps": {"quality/val/acc": WindowStats(count=64, mean=0.75, last=0.75)}},
        )
    )
    across = json.loads(plan.hashes[keys.crossrank("r")]["loss"])
    assert (across["step"], across["t"], across["ranks"], across["mean"]) == (7, 70.0, 2, 1.5)
    assert (across["argmin"], across["argmax"]) == (0, 1)
    quality = json.loads(plan.hashes[keys.quality("r")]["50steps|quality/val/acc"])
    assert (quality["count"], quality["mean"]) == (64, 0.75)
    assert {keys.crossrank("r"), keys.quality("r")} <= set(plan.expiring_keys())
    assert plan.run_activity == {"r": 70.0} and plan.values == 2


def test_unsafe_quality_window_rejects_the_update_and_changes_nothing() -> None:
    plan = WritePlan(RedisKeys("p"))
    bad = CrossRankUpdate(
        run="r",
        step=1,
        t=1.0,
        stats={"loss": CrossRankStats(ranks=1)},
        quality={"50 steps|x": {"quality/val/acc": WindowStats(count=1)}},
    )
    with pytest.raises(ConfigError):
        plan.add_crossrank(bad)
    assert plan.is_empty() and plan.run_activity == {}


def test_one_update_notice_per_run_with_its_newest_step() -> None:
    keys = RedisKeys("p")
    plan = WritePlan(keys)
    plan.add_batch(batch(0, range(3, 8)).model_copy(update={"run": "a"}))
    plan.add_batch(batch(1, range(0, 5)).model_copy(update={"run": "a"}))
    plan.add_batch(batch(0, range(0, 2)).model_copy(update={"run": "b"}))
    notices = plan.notice_commands()
    assert [c[0] for c in notices] == ["eval", "eval"]
    # keyed by one of the run's keys (Redis Cluster routes it to the run's slot)
    assert notices[0][1][1:4] == (1, keys.latest("a"), keys.updates_channel("a"))
    assert json.loads(notices[0][1][4]) == {"run": "a", "step": 7}
    assert json.loads(notices[1][1][4]) == {"run": "b", "step": 1}
    assert WritePlan(keys).notice_commands() == []
