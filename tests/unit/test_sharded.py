"""Sharded models, pure parts: mesh roles and replication factors, a rank's shares, the
combination of shares in stage 2, peers by role and replicas only, and `watch()` guarding
itself."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from processors.detectors import DPMismatchDetector, StragglerDetector
from processors.run_stage import combine_norms, crossrank_stats
from producers.mesh import Topology, replication, role_of_name
from producers.watch import PART_GRADS, GradStats, Watch
from stepstream.contract import RecordKind


@dataclass
class _Placement:
    kind: str

    def is_replicate(self) -> bool:
        return self.kind == "replicate"

    def is_partial(self) -> bool:
        return self.kind == "partial"


class _Mesh:
    def __init__(self, *sizes: int) -> None:
        self.sizes = sizes

    def size(self, dim: int | None = None) -> int:
        return math.prod(self.sizes) if dim is None else self.sizes[dim]


@dataclass
class _DTensor:
    placements: tuple[_Placement, ...]
    device_mesh: _Mesh


def test_mesh_dimension_names_map_to_roles() -> None:
    assert [role_of_name(n) for n in ("pp", "tp", "dp_shard", "replicate", "cp", None)] == [
        "pp",
        "tp",
        "fsdp",
        "dp",
        "tp",
        None,
    ]


def test_replication_counts_ranks_holding_the_same_local_data() -> None:
    shard, rep, part = _Placement("shard"), _Placement("replicate"), _Placement("partial")
    # FSDP2 on 4 ranks: each rank holds its own shard.
    assert replication(_DTensor((shard,), _Mesh(4)), 4, 1) == (1.0, True)
    # HSDP 2 x 2: the replicate dimension holds two copies of each shard.
    assert replication(_DTensor((rep, shard), _Mesh(2, 2)), 4, 1) == (2.0, True)
    # Tensor parallel on the tp half of a 2 x 2 mesh: copied over the dp ranks.
    assert replication(_DTensor((shard,), _Mesh(2)), 4, 1) == (2.0, True)
    # A pending partial sum is no exact local part.
    assert replication(_DTensor((part,), _Mesh(2)), 2, 1) == (1.0, False)
    # Plain tensors: DDP copies them on every rank; a pipeline on each rank of its stage.
    assert replication(torch.zeros(1), 8, 1) == (8.0, True)
    assert replication(torch.zeros(1), 8, 2) == (4.0, True)


def test_shares_of_a_sharded_step_add_up_to_the_norms_of_the_whole_gradient() -> None:
    # Two parameters, each split over 2 ranks (FSDP2): whole norms 5 and sqrt(2).
    rank_norms = {0: [3.0, 1.0], 1: [4.0, 1.0]}
    ranks: dict[int, dict[str, float]] = {}
    for rank, norms in rank_norms.items():
        stats = GradStats(["a", "b"], [0, 1], [0, 1], norms, False, False, [1.0, 1.0])
        values, text = stats.resolve()
        assert text is None
        assert "grad/global_norm" not in values and "grad/norm/a" not in values
        ranks[rank] = values
    stats = crossrank_stats(ranks)
    combine_norms(ranks, stats)
    assert math.isclose(stats["grad/global_norm"].combined or 0.0, math.sqrt(27.0))
    assert math.isclose(stats["grad/norm/a"].combined or 0.0, 5.0)
    assert math.isclose(stats["grad/norm/b"].combined or 0.0, math.sqrt(2.0))
    assert not [m for m in stats if "norm_sq" in m]


def test_a_model_held_whole_keeps_its_norms_and_their_common_value_is_combined() -> None:
    ranks = {r: GradStats(["a"], [0], [0], [2.0], False, False).resolve()[0] for r in range(3)}
    assert ranks[0]["grad/global_norm"] == 2.0 and "grad/global_norm_sq" not in ranks[0]
    stats = crossrank_stats(ranks)
    combine_norms(ranks, stats)
    assert stats["grad/global_norm"].combined == 2.0
    assert stats["grad/norm/a"].combined == 2.0


def test_a_nan_shard_makes_the_combined_norm_nan_and_is_counted_on_its_rank() -> None:
    values, text = GradStats(["a"], [0], [0], [math.nan], False, False, [0.5]).resolve()
    assert values["grad/nonfinite_count"] == 1.0 and text is not None and "a" in text
    ranks = {0: values, 1: GradStats(["a"], [0], [0], [1.0], False, False, [0.5]).resolve()[0]}
    stats = crossrank_stats(ranks)
    assert math.isnan(combine_norms(ranks, stats)["grad/global_norm"])


def _times(slow: int, roles: int) -> dict[int, dict[str, float]]:
    """Data wait per rank: rank `slow` waits 60 ms more than its peers; ranks of role 1 (a
    later pipeline stage) always wait 50 ms."""
    out = {}
    for rank in range(4):
        wait = 0.05 if roles and rank >= 2 else 0.01
        out[rank] = {"perf/data_wait_s": wait + (0.06 if rank == slow else 0.0)}
    return out


def test_stragglers_are_judged_against_peers_of_their_role() -> None:
    roles = {0: (0, 0), 1: (0, 0), 2: (1, 0), 3: (1, 0)}
    by_role = StragglerDetector()
    flat = StragglerDetector()
    named, wrongly = set(), set()
    for step in range(30):
        ranks = _times(slow=-1, roles=1)  # healthy: a pipeline's second stage waits longer
        wrongly |= {f.rank for f in flat.observe_step("r", step, float(step), ranks)}
        named |= {
            f.rank for f in by_role.observe_step("r", step, float(step), ranks, roles, sharded=True)
        }
    assert named == set()
    assert wrongly == {2, 3}  # compared across stages, the later stage looks slow
    slow = StragglerDetector()
    for step in range(30):
        flags = slow.observe_step("r", step, float(step), _times(3, 1), roles, sharded=True)
        named |= {f.rank for f in flags}
    assert named == {3}


def test_dp_mismatch_compares_replicas_never_shards() -> None:
    detector = DPMismatchDetector()
    # HSDP 2 x 2: ranks 0 and 2 hold shard 0, ranks 1 and 3 shard 1.
    replicas = {0: (0, 0, 0), 1: (0, 0, 1), 2: (0, 0, 0), 3: (0, 0, 1)}
    norms = {0: 1.0, 1: 2.0, 2: 1.0, 3: 2.0}
    ranks = {r: {"grad/shard_norm": v} for r, v in norms.items()}
    assert detector.observe_step("r", 0, 0.0, ranks, replicas) == []
    # Shards without a known topology are never compared.
    assert detector.observe_step("r", 1, 1.0, ranks) == []
    ranks[3] = {"grad/shard_norm": 2.5}
    flags = detector.observe_step("r", 2, 2.0, ranks, replicas)
    assert [(f.detector, f.cleared) for f in flags] == [("dp_mismatch", False)]


def test_a_hook_that_raises_turns_its_part_off_and_training_goes_on() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    records: list[tuple[int | None, RecordKind, Any]] = []
    errors: list[str] = []
    watch = Watch(
        lambda step, kind, values: records.append((step, kind, values)),
        model,
        optimizer,
        on_error=lambda part, exc: errors.append(part),
    )

    def broken() -> None:
        raise RuntimeError("injected")

    watch._read_grads = broken  # type: ignore[method-assign]
    for _ in range(5):
        loss = model(torch.randn(3, 4)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert errors == [PART_GRADS]  # reported once
    assert PART_GRADS in watch.disabled and watch.step == 5
    assert [kind for _, kind, _ in records] == [RecordKind.TRAIN] * 5
    assert all("perf/step_time_s" in values for _, _, values in records[1:])


def test_topology_heartbeat_values() -> None:
    topology = Topology({"pp": 1, "dp": 0}, pp_size=2)
    assert topology.heartbeat_values() == {"mesh/dp": 0.0, "mesh/pp": 1.0}
