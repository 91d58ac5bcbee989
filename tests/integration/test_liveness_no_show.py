"""A rank that fails before its first record, end to end: 3 ranks started as torchrun
would, instrumented through the public SDK, the last of which exits before it logs; read
back through the public reader. Its own stack, with the liveness grace for ranks never heard
lowered to 5 s (default 30 s) so the test waits seconds, not half a minute."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from query.reader import MetricsReader
from stepstream.settings import Settings

from .conftest import fresh_stack, wait_for
from .test_liveness_live import run_ranks

pytestmark = pytest.mark.integration

NEVER_HEARD_S = 5.0


@pytest.fixture(scope="module")
def no_show_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    yield from fresh_stack(
        tmp_path_factory, detector_params={"liveness": {"never_heard_s": NEVER_HEARD_S}}
    )


def test_a_rank_that_fails_before_its_first_record_is_dead_once_its_peers_waited(
    no_show_settings: Settings, tmp_path: Path
) -> None:
    run_id = f"it-{uuid.uuid4().hex[:10]}"
    # rank 2 of 3 exits before it logs anything; ranks 0 and 1 report for 12 s
    codes = run_ranks(no_show_settings, run_id, 0, "no_show", 12.0, tmp_path, world=3)
    assert codes == [0, 0, 3], [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
    with MetricsReader.from_url(no_show_settings.redis_url, no_show_settings.key_prefix) as r:
        dead = wait_for(
            lambda: [
                a
                for a in r.alerts(run_id, count=100)
                if a.rule == "dead_rank" and a.status == "firing"
            ],
            timeout=30,
        )
        assert [a.rank for a in dead] == [2], [(a.rule, a.rank, a.summary) for a in dead]
        assert "never reported" in dead[0].summary and "2 of its 3 ranks" in dead[0].summary
        # t: when the processor first heard the run; the verdict NEVER_HEARD_S later plus
        # the liveness timer's period
        waited = dead[0].raised_at - dead[0].t
        assert NEVER_HEARD_S <= waited <= NEVER_HEARD_S + 2.0, waited
        # ranks 0 and 1 were never taken for dead or hung (their losses on random data
        # may spike: not judged here)
        liveness = ("dead_rank", "hung_rank", "rank_exited", "node_lost")
        assert not [a for a in r.alerts(run_id, count=100) if a.rule in liveness and a.rank != 2]
