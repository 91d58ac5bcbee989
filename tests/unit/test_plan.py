"""What the sink writes, planned without Redis."""

from __future__ import annotations

import json
import math

from sinks.plan import WritePlan
from stepstream.contract import Alert, WindowStats, WindowUpdate
from stepstream.keys import RedisKeys


def update(rank: int, loss: float, t: float) -> WindowUpdate:
    stats = WindowStats(count=1, mean=loss, min=loss, max=loss, last=loss)
    return WindowUpdate(run="r", rank=rank, world=2, node="n", step=3, t=t,
                        latest={"loss": loss}, windows={"50steps": {"loss": stats}})


def test_later_updates_of_a_series_replace_earlier_in_one_hset() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    plan.add_window_update(update(0, 1.0, 10.0))
    plan.add_window_update(update(0, 2.0, 11.0))
    plan.add_window_update(update(1, math.nan, 12.0))
    latest = plan.hashes[keys.latest("r")]
    assert latest == {"0|loss": "2.0", "1|loss": "NaN"}
    stats = WindowStats.model_validate_json(plan.hashes[keys.window("r", "50steps")]["0|loss"])
    assert stats.mean == 2.0
    assert plan.run_activity == {"r": 12.0}
    assert json.loads(plan.hashes[keys.ranks("r")]["1"]) == {"node": "n", "step": 3, "t": 12.0}
    assert keys.window("r", "50steps") in plan.expiring_keys()


def test_firing_then_resolved_alert_leaves_no_active_entry() -> None:
    keys = RedisKeys()
    plan = WritePlan(keys)
    base = {"fingerprint": "f1", "rule": "nonfinite", "run": "r", "t": 1.0, "raised_at": 2.0}
    plan.add_alert(Alert(status="firing", **base))
    plan.add_alert(Alert(status="resolved", **base))
    assert plan.hashes[keys.active_alerts("r")] == {}
    assert plan.hash_deletes[keys.active_alerts("r")] == ["f1"]
    assert [e[1]["fingerprint"] for e in plan.stream_entries] == ["f1", "f1"]
    assert [c for c, _ in plan.publishes] == [keys.alerts_channel("r")] * 2
