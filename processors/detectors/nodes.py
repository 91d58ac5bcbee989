"""Which silent ranks are one lost node: the rule behind ``node_lost``. Pure logic.

A host that loses power, its network or its kernel silences every rank on it at once. Per
rank that is as many ``dead_rank`` alerts as the node had ranks, for one fault whose cause
is the node. A node is lost when:

- it has two or more ranks (one rank alone cannot tell a dead process from a dead host);
- every one of them is silent for the dead window, none closed cleanly (a finish is not a
  loss) and none said it crashed (a software fault, reported as such);
- their last words lie within `window_s` of each other (ranks that died one by one, minutes
  apart, are separate faults). Last words are compared in event time: the ranks of one
  node share its clock, and the processor's arrival times differ by the lag of each
  rank's partition, which under load exceeds a heartbeat;
- each of its ranks' silence is witnessed (its telemetry partition was read after its
  last word: a processor cut off or lagging hears ranks stop that did not), and a rank
  of another node still reports (a run gone silent everywhere is a telemetry outage or
  the end of a job, judged elsewhere).

While a dead rank's node peer is still reporting but within `window_s` of the dead rank's
last word, the node may yet be lost: the rank's own verdict waits, so the node's one alert
comes first and the per-rank ones arrive already inhibited. Not in a run whose ranks all
share one node (a single host's job): that node is never judged lost, and waiting for a
peer's next message past the window (one send interval, about a second) only made its
dead ranks late. A node's dead ranks also wait while a peer's silence is not witnessed
yet, for at most `WITNESS_WAIT_DEAD_WINDOWS` dead windows (a partition that stays unread
must not hide a death for good).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stepstream import vocabulary as vocab

#: How long (in dead windows past the node's last arrival) dead ranks wait for a node
#: peer's silence to be witnessed before each is judged alone: partitions lag each other by
#: seconds under load (6 s seen in CI, 2.4 dead windows of the default 2.5 s), and a
#: lagging one is read well within this; 20 s at the defaults.
WITNESS_WAIT_DEAD_WINDOWS = 8.0


@dataclass(frozen=True, slots=True)
class RankView:
    """What the rule needs of one rank: its node, when it was last heard from (processor
    clock), and whether it closed cleanly or said it crashed."""

    node: str
    seen: float
    closed: bool = False
    crashed: bool = False
    said: float | None = None
    witnessed: bool = True
    """Its silence is surely its own (see LivenessDetector._witnessed)."""

    @property
    def last_words(self) -> float:
        """When it last spoke, in its node's clock (its arrival time when unknown)."""
        return self.seen if self.said is None else self.said


@dataclass
class NodeVerdict:
    """`lost`: lost nodes and their ranks (sorted); `waiting`: dead ranks whose own verdict
    waits for their node's."""

    lost: dict[str, list[int]] = field(default_factory=dict)
    waiting: set[int] = field(default_factory=set)


def node_labels(node: str) -> dict[str, str]:
    """The alert labels naming a node (none when the node is unknown)."""
    return {vocab.NODE_LABEL: node} if node else {}


def judge_nodes(
    ranks: Mapping[int, RankView], now: float, dead_s: float, window_s: float
) -> NodeVerdict:
    """The lost nodes of one run at `now` and the dead ranks that wait (module docstring)."""
    verdict = NodeVerdict()
    # Nodes with a rank still open ("" counts as a node of its own): once per call, as a
    # run of thousands of ranks is judged every tick.
    open_nodes = {v.node for v in ranks.values() if not v.closed}
    by_node: dict[str, list[int]] = {}
    for rank, view in ranks.items():
        if view.node:
            by_node.setdefault(view.node, []).append(rank)
    for node, members in by_node.items():
        if len(members) < 2:
            continue
        views = [ranks[r] for r in members]
        if any(v.closed or v.crashed for v in views):
            continue  # a rank finished or reported its crash: not a vanished host
        dead = [r for r in members if now - ranks[r].seen >= dead_s]
        if len(open_nodes) - (node in open_nodes) == 0:
            # The node holds every rank of the run: it is never judged lost (no other
            # node witnesses it), so its dead ranks have no verdict to wait for.
            continue
        if len(dead) == len(members):
            seen = [v.last_words for v in views]
            others_alive = any(
                v.node != node and not v.closed and now - v.seen < dead_s for v in ranks.values()
            )
            if max(seen) - min(seen) <= window_s and others_alive:
                if all(v.witnessed for v in views):
                    verdict.lost[node] = sorted(members)
                elif now - max(v.seen for v in views) < WITNESS_WAIT_DEAD_WINDOWS * dead_s:
                    # A peer's silence not witnessed yet (its partition read later than
                    # this one's): the node's verdict is still to come, and a dead_rank
                    # raised now would page ahead of it, uninhibited.
                    verdict.waiting.update(dead)
            continue
        for rank in dead:
            if ranks[rank].crashed:
                continue  # it said it crashed: its own fault, reported at once
            if any(
                now - ranks[p].seen < dead_s
                and ranks[p].last_words - ranks[rank].last_words <= window_s
                for p in members
                if p != rank
            ):
                verdict.waiting.add(rank)
    return verdict
