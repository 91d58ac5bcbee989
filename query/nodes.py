"""Ranks grouped by node, with each node's system metrics: ``stepstream query --nodes``
and ``GET /runs/{run}/nodes``.

Every rank samples its host (``sys/host_*``, disk, swap, network, GPUs), so a node's host
figures are the mean of what its ranks last reported; per-process figures (``sys/proc_*``,
``cuda/*``) are summed over the node's ranks: what the job costs that node.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from query.reader import LatestValue, MetricsReader, RankLiveness

#: Metric-name prefixes of per-process figures, summed over a node's ranks.
PER_PROCESS = ("sys/proc_", "cuda/")
#: Metric-name prefixes of system metrics shown per node.
SYSTEM = ("sys/", "cuda/", "gpu")


class NodeRow(BaseModel):
    """One node of a run: its ranks, their liveness and the node's system metrics."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    node: str = Field(description="Node name the ranks reported ('' when none did).")
    ranks: list[int]
    alive: int | None = Field(None, description="Ranks heard from within stale_after_s.")
    step_min: int | None = None
    step_max: int | None = None
    last_t: float | None = Field(None, description="Newest event time of its ranks (Unix s).")
    system: dict[str, float] = Field(
        default_factory=dict,
        description="Host metrics: mean of its ranks' latest; per-process ones: their sum.",
    )


def group_nodes(ranks: Iterable[RankLiveness], latest: Iterable[LatestValue]) -> list[NodeRow]:
    """Ranks by node (sorted by node name) with the node's system metrics."""
    by_node: dict[str, list[RankLiveness]] = {}
    for r in ranks:
        by_node.setdefault(r.node, []).append(r)
    node_of = {r.rank: node for node, members in by_node.items() for r in members}
    values: dict[str, dict[str, list[float]]] = {}
    for v in latest:
        node = node_of.get(v.rank)
        if node is not None and v.metric.startswith(SYSTEM):
            values.setdefault(node, {}).setdefault(v.metric, []).append(v.value)
    rows = []
    for node in sorted(by_node):
        members = sorted(by_node[node], key=lambda r: r.rank)
        steps = [r.step for r in members if r.step is not None]
        alive = [r.alive for r in members if r.alive is not None]
        system = {
            metric: sum(vals) if metric.startswith(PER_PROCESS) else sum(vals) / len(vals)
            for metric, vals in sorted(values.get(node, {}).items())
        }
        rows.append(
            NodeRow(
                node=node,
                ranks=[r.rank for r in members],
                alive=sum(alive) if alive else None,
                step_min=min(steps) if steps else None,
                step_max=max(steps) if steps else None,
                last_t=max(r.t for r in members) if members else None,
                system=system,
            )
        )
    return rows


def run_nodes(reader: MetricsReader, run: str, stale_after_s: float = 30.0) -> list[NodeRow]:
    """The nodes of `run` as stored now."""
    return group_nodes(reader.ranks(run, stale_after_s), reader.latest_values(run))
