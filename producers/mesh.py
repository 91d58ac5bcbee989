"""Where a rank sits in a sharded job, and what its local gradient shards add up to.

Under FSDP2, HSDP, tensor and pipeline parallelism no rank holds the whole model: each
holds shards (DTensor local tensors, or a pipeline stage's own layers). The job's gradient
norm is a sum over those shards, and `torch.nn.utils.clip_grad_norm_` computes it with a
collective. The SDK adds no collective to the step: each rank reports its *share* of every
squared norm, its local squared norm divided by the number of ranks holding the same data
(replicas along a ``Replicate`` mesh dimension, data-parallel copies of a pipeline stage),
and stage 2 adds the shares of a step into the job's true norm.

The mesh also tells who a rank's peers are: ranks with the same pipeline stage (``pp``) and
tensor-parallel index (``tp``) do the same work and can be compared; ranks equal on every
coordinate but ``dp`` hold the same shard and must agree.

Only read here: placements, mesh shapes and coordinates, which DTensor and DeviceMesh
keep on every rank (no communication).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepstream import vocabulary as vocab

#: Mesh dimension names people use for each role (TorchTitan, torch docs, Megatron).
_ROLE_NAMES: dict[str, frozenset[str]] = {
    vocab.MESH_PP: frozenset({"pp", "pipe", "pipeline", "stage"}),
    vocab.MESH_TP: frozenset({"tp", "tensor", "mp", "model", "cp", "context", "sp", "ep"}),
    vocab.MESH_FSDP: frozenset({"fsdp", "shard", "dp_shard", "dp_shard_cp", "zero"}),
    vocab.MESH_DP: frozenset({"dp", "ddp", "replicate", "dp_replicate", "data"}),
}


def role_of_name(name: str | None) -> str | None:
    """The role a mesh dimension's name declares (``pp``, ``tp``, ``fsdp``, ``dp``), or None
    for a name no convention covers."""
    if not name:
        return None
    lowered = name.lower()
    for role, names in _ROLE_NAMES.items():
        if lowered in names:
            return role
    return None


@dataclass(frozen=True)
class Topology:
    """One rank's place in the job's device mesh.

    coords: the coordinate per role (roles the mesh lacks are absent); several mesh
        dimensions of one role (``cp`` and ``tp``) fold into one mixed-radix coordinate.
    pp_size: pipeline stages (1 without pipelining): plain parameters are replicated over
        world / pp_size ranks.
    """

    coords: dict[str, int] = field(default_factory=dict)
    pp_size: int = 1

    def heartbeat_values(self) -> dict[str, float]:
        """The ``mesh/<role>`` heartbeat values."""
        return {vocab.MESH_PREFIX + role: float(c) for role, c in sorted(self.coords.items())}


def _placement_kind(placement: Any) -> str:
    """replicate, partial (a pending sum) or shard: every other placement splits the
    tensor (torch's ``_StridedShard``, which FSDP2 uses over tensor parallelism, answers
    False to ``is_shard()``)."""
    if placement.is_replicate():
        return "replicate"
    if placement.is_partial():
        return "partial"
    return "shard"


def topology_of(mesh: Any, params: Iterable[Any] = ()) -> Topology:
    """The rank's topology from a `DeviceMesh` (its root mesh: the whole job). A dimension
    whose name declares no role is ``dp`` when every DTensor parameter is replicated along
    it and ``fsdp`` when one is sharded along it (FSDP applied over a mesh named "dp")."""
    root = mesh._get_root_mesh() if hasattr(mesh, "_get_root_mesh") else mesh
    names: Sequence[str | None] = root.mesh_dim_names or (None,) * root.ndim
    coordinate = root.get_coordinate()
    if coordinate is None:  # this rank is not in the mesh
        return Topology()
    sharded_dims: set[str | None] = set()
    for param in params:
        placements = getattr(param, "placements", None)
        p_mesh = getattr(param, "device_mesh", None)
        if placements is None or p_mesh is None:
            continue
        p_names = p_mesh.mesh_dim_names or (None,) * p_mesh.ndim
        for name, placement in zip(p_names, placements, strict=False):
            if _placement_kind(placement) != "replicate":
                sharded_dims.add(name)
    coords: dict[str, int] = {}
    pp_size = 1
    for dim, name in enumerate(names):
        role = role_of_name(name)
        if role in (None, vocab.MESH_DP, vocab.MESH_FSDP):
            role = vocab.MESH_FSDP if name in sharded_dims else (role or vocab.MESH_DP)
        size = int(root.size(dim))
        if role == vocab.MESH_PP:
            pp_size *= size
        coords[role] = coords.get(role, 0) * size + int(coordinate[dim])
    return Topology(coords, pp_size)


def find_mesh(params: Iterable[Any]) -> Any | None:
    """The device mesh of the first DTensor parameter, else None."""
    for param in params:
        mesh = getattr(param, "device_mesh", None)
        if mesh is not None and getattr(param, "placements", None) is not None:
            return mesh
    return None


def replication(param: Any, world: int, pp_size: int) -> tuple[float, bool]:
    """How many ranks hold the same data as this rank's local part of `param`, and whether
    the local part is exact (False when its gradient is a pending partial sum, which only
    a collective could complete).

    A plain tensor is copied on every rank of its pipeline stage: world / pp_size. A
    DTensor is copied along each ``Replicate`` dimension of its mesh, and over the ranks of
    the job its mesh does not span outside the pipeline dimension."""
    placements = getattr(param, "placements", None)
    p_mesh = getattr(param, "device_mesh", None)
    if placements is None or p_mesh is None:
        return max(1.0, world / max(1, pp_size)), True
    copies = 1.0
    exact = True
    for dim, placement in enumerate(placements):
        kind = _placement_kind(placement)
        if kind == "replicate":
            copies *= int(p_mesh.size(dim))
        elif kind == "partial":
            exact = False
    outside = world / max(1, int(p_mesh.size()) * max(1, pp_size))
    return copies * max(1.0, outside), exact
