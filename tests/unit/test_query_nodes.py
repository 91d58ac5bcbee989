"""Ranks grouped by node with per-node system metrics (`query.nodes`)."""

from __future__ import annotations

from query.nodes import group_nodes
from query.reader import LatestValue, RankLiveness


def test_ranks_grouped_by_node_with_host_means_and_process_sums() -> None:
    ranks = [
        RankLiveness(rank=r, node=n, step=s, t=100.0 + r, alive=a)
        for r, n, s, a in (
            (0, "a", 10, True),
            (1, "a", 12, True),
            (2, "b", 7, False),
            (3, "b", 7, True),
        )
    ]
    latest = [
        LatestValue(rank=0, metric="sys/host_cpu_pct", value=40.0),
        LatestValue(rank=1, metric="sys/host_cpu_pct", value=60.0),
        LatestValue(rank=0, metric="sys/proc_rss_bytes", value=1e9),
        LatestValue(rank=1, metric="sys/proc_rss_bytes", value=2e9),
        LatestValue(rank=2, metric="sys/host_cpu_pct", value=5.0),
        LatestValue(rank=2, metric="loss", value=0.3),  # not a system metric
    ]
    a, b = group_nodes(ranks, latest)
    assert (a.node, a.ranks, a.alive, a.step_min, a.step_max, a.last_t) == (
        "a",
        [0, 1],
        2,
        10,
        12,
        101.0,
    )
    assert a.system == {"sys/host_cpu_pct": 50.0, "sys/proc_rss_bytes": 3e9}
    assert (b.node, b.ranks, b.alive) == ("b", [2, 3], 1)
    assert b.system == {"sys/host_cpu_pct": 5.0}
