"""The processor's per-partition bookkeeping (processors.partition_state)."""

from __future__ import annotations

from processors.partition_state import PartitionKeys, SeededRuns


def test_partition_keys_name_the_keys_last_read_from_partitions_that_came_back() -> None:
    keys: PartitionKeys[tuple[str, int]] = PartitionKeys()
    keys.note(("r", 0), 1)
    keys.note(("r", 1), 2)
    keys.note(("s", 0), 1)
    keys.note(("s", 0), 3)  # moved: it is on partition 3 now
    assert keys.on({1}) == [("r", 0)]
    assert sorted(keys.on({1, 3})) == [("r", 0), ("s", 0)]
    assert keys.on({1}) == [("r", 0)]  # telling them keeps them
    keys.drop([("r", 0), ("x", 9)])  # expired; unknown keys are ignored
    assert keys.on({1, 2, 3}) == [("r", 1), ("s", 0)]
    assert len(keys) == 2


def test_a_run_is_seeded_once_until_a_rebalance_or_its_expiry() -> None:
    seeded = SeededRuns()
    assert seeded.first_sight("a") and not seeded.first_sight("a")
    assert seeded.first_sight("b")
    seeded.drop(["a"])  # expired: cold when it comes back
    assert seeded.first_sight("a") and not seeded.first_sight("b")
    seeded.reset()  # a rebalance began
    assert seeded.first_sight("a") and seeded.first_sight("b")


def test_partition_keys_tell_where_a_key_was_last_read() -> None:
    keys: PartitionKeys[str] = PartitionKeys()
    keys.note("a", 3)
    keys.note("a", 1)
    assert keys.get("a") == 1 and keys.get("b") is None
