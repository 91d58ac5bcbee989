"""The count behind the broker-kill bound of tests/integration/test_faults.py: what the
broker held unread at the kill, on hand-made offsets and messages."""

from __future__ import annotations

from bench.fault_harness import SERIES, Unread, Verdict, unread_points
from stepstream.contract import Batch, Record


def message(run: str, rank: int, steps: list[int], metric: str = SERIES) -> bytes:
    records = [Record(seq=s, t=1.0, step=s, values={metric: float(s), "loss": 0.5}) for s in steps]
    return Batch(run=run, rank=rank, world=2, records=records).to_bytes()


def test_counts_points_at_or_past_the_committed_offset() -> None:
    messages = [
        (0, 10, message("job", 0, [0, 1, 2])),  # read and committed
        (0, 11, message("job", 0, [3, 4])),  # committed offset 11: the next to read
        (1, 5, message("job", 1, [3])),  # partition 1 has no commit: all of it
        (0, 12, message("job", 0, [4, 5])),  # a resend: (0, 4) counts once
    ]
    assert unread_points("job", {0: 11}, messages) == {(0, 3), (0, 4), (0, 5), (1, 3)}


def test_other_runs_series_and_bad_messages_are_not_counted() -> None:
    messages = [
        (0, 0, message("other", 0, [1, 2])),
        (0, 1, message("job", 0, [7], metric="loss")),
        (
            0,
            2,
            Batch(run="job", rank=0, records=[Record(seq=0, t=1.0, values={SERIES: 1})]).to_bytes(),
        ),
        (0, 3, b"not json"),
        (0, 4, None),
    ]
    assert unread_points("job", {}, messages) == set()


def test_a_kill_with_everything_read_bounds_the_loss_at_zero() -> None:
    messages = [(p, o, message("job", p, [o])) for p in range(2) for o in range(3)]
    assert unread_points("job", {0: 3, 1: 3}, messages) == set()
    assert len(unread_points("job", {0: 3, 1: 1}, messages)) == 2


def test_the_verdict_carries_the_measured_bound() -> None:
    unread = Unread(steps=3, telemetry=2, validated=2, gap_ms=5.0, points=frozenset())
    kill = Verdict("broker kill+restart", 4, 0, 0, 2, 0.2, 0, 20.0, unread=unread)
    other = Verdict("sink SIGKILL", 0, 0, 0, 2, 0.2, 0, 20.0)
    assert (kill.unread_at_kill, other.unread_at_kill) == (3, None)
    assert not kill.lost <= kill.unread_at_kill  # what test_faults asserts fails here
    assert kill.row().split()[2:4] == ["4", "3"] and other.row().split()[2:4] == ["0", "-"]
