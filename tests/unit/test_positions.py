"""A log that started over is told from the positions read in it."""

from stepstream.positions import restarted_logs


def test_a_log_ending_below_the_position_read_in_it_started_over() -> None:
    highwaters = {"a": 3, "b": 500, "c": 119, "d": 120, "e": 121}
    read = {"a": 499, "b": 499, "c": 120, "d": 120, "e": 120}
    # b: the end is past what was read (the usual case); c: below the position, which a
    # log that held it cannot report; d: the end equals the position, as an idle log does
    # right after an assignment (the position is then the committed offset, the next to
    # read): not a restart; e: one past it.
    assert restarted_logs(highwaters, read) == ["a", "c"]


def test_nothing_is_told_before_a_fetch_or_before_a_read() -> None:
    assert restarted_logs({"a": None, "b": 0}, {"a": 10, "b": None}) == []
    assert restarted_logs({"a": 0}, {}) == []


def test_offset_jumps_name_partitions_another_worker_read_meanwhile() -> None:
    from stepstream.positions import PartitionOffsets

    offsets = PartitionOffsets()
    assert offsets.jumps([(0, 5), (1, 9), (0, 6)]) == set()  # first sight: no jump
    assert offsets.jumps([(0, 7), (1, 30)]) == {1}
    assert offsets.last == {0: 7, 1: 30}
    assert offsets.jumps([(1, 31), (1, 31)]) == set()  # the same offset again: no jump
    assert offsets.jumps([(0, 9)]) == {0}  # one record skipped is a jump
