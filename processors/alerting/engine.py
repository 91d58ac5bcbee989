"""The alert engine: rules over detector findings and window stats, one lifecycle per
fingerprint, silences and inhibition applied to notifications. Pure logic.

Run it where a whole run is in one place (keyed by run), so cross-rank conditions and
inhibition between ranks see every rank.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from processors.alerting.conditions import AcrossRanks
from processors.alerting.inhibition import DEFAULT_INHIBIT_RULES, InhibitRule, inhibited_by
from processors.alerting.lifecycle import AlertState, Notice, Phase, Timing
from processors.alerting.matchers import match_all
from processors.alerting.rules import Rule
from processors.alerting.silences import Silence, silenced_by
from processors.alerting.templates import render
from processors.flags import fingerprint
from processors.forward import StageUpdate
from stepstream.contract import OPEN_STATUSES, Alert, AlertStatus, Severity, WindowUpdate


@dataclass
class _Tracked:
    state: AlertState
    labels: dict[str, str]
    last: Alert | None = None
    detector: bool = False
    last_finding_at: float = 0.0
    # Detectors report edges (an episode starts, an episode clears); the level between
    # edges (the latest finding) is kept here so `for` and `keep_firing_for` in seconds
    # can elapse on `tick`.
    level: Alert | None = None
    # A restored alert (see `restore`) whose detector has not spoken since: the wall time
    # by which it must re-assert, else it resolves (`resolve_unasserted`).
    reassert_by: float | None = None


#: Detectors of stage 1 (per rank, where the rank's telemetry is read) whose alerts
#: re-assert quickly: see `AlertEngine._held_here`.
FOUND_IN_STAGE_1 = frozenset(
    {
        "spike",
        "nonfinite",
        "exploding_gradients",
        "vanishing_gradients",
        "error_burst",
        "telemetry_loss",
    }
)

#: Detectors whose state takes longer than a failover's re-assert window to rebuild (a
#: leak's 40 s of samples, a plateau's patience, a CUSUM, a 20-step median): their
#: restored alerts wait for the detector or the resolve timeout instead, so a condition
#: still holding is not resolved and paged again. The rest re-assert within seconds: a
#: dead or lost rank from the rank registry, value detectors at their next point.
SLOW_TO_REASSERT = frozenset(
    {
        "memory_leak",
        "plateau",
        "overfitting",
        "divergence",
        "fail_slow",
        "job_slowdown",
        "straggler",
        "throughput_regression",
        "resource_pressure",
        "hung_rank",
        "dp_mismatch",
        "rank_desync",
    }
)


def _selector_labels(run: str, rank: int | None, metric: str | None) -> dict[str, str]:
    labels = {"run": run}
    if rank is not None:
        labels["rank"] = str(rank)
    if metric is not None:
        labels["metric"] = metric
    return labels


def _labels(rule: Rule, run: str, rank: int | None, metric: str | None) -> dict[str, str]:
    """The labels silences and inhibition match an alert of `rule` by."""
    return {
        "rule": rule.name,
        "severity": rule.severity,
        **rule.labels,
        **_selector_labels(run, rank, metric),
    }


class AlertEngine:
    """Turns detector findings and window updates into alert transitions.

    Every detector has a built-in rule (fires with the detector, resolves when it clears)
    unless a user rule names that detector. `clock` stamps `raised_at`.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        clock: Callable[[], float],
        inhibit_rules: Iterable[InhibitRule] = DEFAULT_INHIBIT_RULES,
    ) -> None:
        self._clock = clock
        self.inhibit_rules = tuple(inhibit_rules)
        self.silences: list[Silence] = []
        self._tracked: dict[str, _Tracked] = {}
        self._held_before: set[str] = set()  # tracked before the last forget_all
        self._run_seen: dict[str, float] = {}  # run -> wall clock of its latest input
        # (run, window, metric, stat) -> rank -> value: peers for cross-rank thresholds
        self._peers: dict[tuple[str, str, str, str], dict[int, float]] = defaultdict(dict)
        self.set_rules(rules)

    def set_rules(self, rules: Iterable[Rule]) -> list[Alert]:
        """Replace the rules (hot reload); alert states of kept rule names survive.

        Returns the withdrawn transitions of pending alerts whose rule is gone, so they
        leave the stored active set (their `for` can no longer elapse).
        """
        self.rules = list(rules)
        self._by_detector: dict[str, list[Rule]] = defaultdict(list)
        self._conditions: list[Rule] = []
        for rule in self.rules:
            if rule.detector:
                self._by_detector[rule.detector].append(rule)
            elif rule.condition:
                self._conditions.append(rule)
        names = {r.name for r in self.rules}
        kept: dict[str, _Tracked] = {}
        withdrawn = []
        for fp, t in self._tracked.items():
            if t.labels["rule"] in names or t.labels.get("builtin") == "true":
                kept[fp] = t
            elif t.last is not None and t.last.status == "pending":
                withdrawn.append(_ended(t.last, self._clock(), "its rule was removed"))
        self._tracked = kept
        return withdrawn

    @property
    def has_conditions(self) -> bool:
        """True when some rule evaluates window stats (window updates are worth reading)."""
        return bool(self._conditions)

    def _builtin(self, detector: str, severity: Severity) -> Rule:
        return Rule(
            name=detector,
            severity=severity,
            timing=Timing(),
            detector=detector,
            labels={"builtin": "true"},
        )

    def on_finding(self, finding: Alert) -> list[Alert]:
        """Apply a detector finding to every rule that watches that detector.

        A finding is the detector's alert message as the stages raise it (`flag_to_alert`):
        its `rule` names the detector, status ``firing`` says the condition started and
        ``resolved`` that it cleared.
        """
        self.note_activity(finding.run)
        rules = self._by_detector.get(finding.rule) or [
            self._builtin(finding.rule, finding.severity)
        ]
        selector_labels = _selector_labels(finding.run, finding.rank, finding.metric)
        out = []
        for rule in rules:
            if not match_all(rule.selector, selector_labels):
                continue
            alert = self._advance_finding(rule, finding, finding.t, fresh=True)
            if alert:
                out.append(alert)
        return out

    def _advance_finding(
        self, rule: Rule, finding: Alert, t: float, *, fresh: bool
    ) -> Alert | None:
        """Apply a detector finding (`fresh`: as it arrives; else its level, at `t`)."""
        values: dict[str, object] = {
            "value": finding.evidence.get("value"),
            **finding.evidence,
            "detector_summary": finding.summary,
        }
        return self._advance(
            rule,
            finding.run,
            finding.rank,
            finding.metric,
            _holds(finding),
            t,
            finding.step if fresh else None,
            values,
            finding.summary,
            finding.evidence,
            from_detector=True,
            level=finding if fresh else None,
            affected=tuple(finding.affected),
            description=finding.description,
            extra_labels=finding.labels,
        )

    def restore(
        self,
        alerts: Iterable[Alert],
        reassert_s: float | None = None,
        detectors: bool | None = None,
    ) -> int:
        """Take over alerts that were firing before this engine started (a restart, or a
        run's partition moving to this worker); return how many were taken.

        A restored alert is firing (or pending, and goes on pending): the condition still
        holding does not notify again, a condition rule that no longer holds resolves (or
        withdraws) it as usual. A detector alert must be
        re-asserted by this worker's detectors within `reassert_s` of the run's next input
        (its clear, owed by the old owner, is lost with it): else it resolves then
        (`resolve_unasserted`). One this engine held before its last `forget_all` is
        taken as it was: its run stayed here, and its detector's episode with it.
        Detectors slow to rebuild their state (SLOW_TO_REASSERT), and every detector when
        `reassert_s` is None, resolve after the resolve timeout instead. Alerts of rules
        that no longer exist are left alone. `detectors` True takes detector alerts only,
        False condition-rule alerts only (a worker raises one kind of a run, see
        Alerting.take_over), None both.
        """
        names = {rule.name: rule for rule in self.rules}
        taken = 0
        for alert in alerts:
            if alert.status not in OPEN_STATUSES or alert.fingerprint in self._tracked:
                continue
            # No user rule of that name: a detector's built-in rule (or a user rule since
            # removed, which then resolves on the resolve timeout like a quiet detector).
            rule = names.get(alert.rule) or self._builtin(alert.rule, alert.severity)
            if detectors is not None and (rule.detector is not None) != detectors:
                continue
            # A pending alert goes on pending from when its condition started: it fires
            # when `for` has elapsed since then, or is withdrawn like a firing one resolves.
            pending = alert.status == "pending"
            since = alert.active_since if alert.active_since is not None else alert.t
            state = AlertState(
                phase=Phase.PENDING if pending else Phase.FIRING,
                active_since_t=since,
                active_since_step=alert.step,
                last_notified_t=alert.t,
            )
            self._tracked[alert.fingerprint] = _Tracked(
                state,
                {**alert.labels, **_labels(rule, alert.run, alert.rank, alert.metric)},
                last=alert,
                detector=rule.detector is not None,
                last_finding_at=self._clock(),
            )
            if (
                reassert_s is not None
                and rule.detector is not None
                and rule.detector not in SLOW_TO_REASSERT
                and not self._held_here(alert, rule.detector)
            ):
                self._tracked[alert.fingerprint].reassert_by = self._clock() + reassert_s
            taken += 1
        return taken

    def _held_here(self, alert: Alert, detector: str) -> bool:
        """Whether `alert`'s detector state surely stayed on this worker: it held the alert
        before the rebalance, and the finding is its own stage 2's. A stage-1 finding of a
        rank (FOUND_IN_STAGE_1) is made where that rank's telemetry partition is read, and
        raised where its run's summaries are: the two may part in a rebalance, the
        detector starting cold while its run's alert stays here."""
        if alert.fingerprint not in self._held_before:
            return False
        return alert.rank is None or detector not in FOUND_IN_STAGE_1

    def resolve_unasserted(self) -> list[Alert]:
        """Resolve restored detector alerts not re-asserted in time (see `restore`).

        The window counts from the run's first input after the take-over, so a run that
        is silent keeps its alerts for the resolve timeout to judge.
        """
        now = self._clock()
        out = []
        for fp, tracked in list(self._tracked.items()):
            last, due = tracked.last, tracked.reassert_by
            if due is None or last is None or now < due:
                continue
            if self._run_seen.get(last.run, 0.0) < tracked.last_finding_at:
                continue  # nothing of the run arrived since the take-over: not judged
            del self._tracked[fp]
            out.append(
                _ended(
                    last,
                    now,
                    f"not re-asserted after run {last.run} moved to another worker: "
                    "its condition is no longer seen",
                )
            )
        return out

    def forget_all(self) -> None:
        """Drop every alert state (this worker's runs are being reassigned; see restore).

        The fingerprints are remembered until the next reassignment: an alert this worker
        held before keeps its detector's open episode when its run stays here, so restoring
        it waits for no re-assertion (the detector will not repeat a start it reported).
        """
        self._held_before = set(self._tracked)
        self._tracked.clear()
        self._peers.clear()
        self._run_seen.clear()

    def tick(self) -> list[Alert]:
        """Advance detector-driven alerts between findings.

        A detector says when its condition starts and when it clears, nothing in between.
        A rule with `for: 30s` on a detector fires 30 s after the start if no clear came,
        and `keep_firing_for: 1m` resolves 1 min after the clear if no new start came;
        this advances both on the wall clock. Spans in steps advance only with findings.
        """
        now = self._clock()
        out = []
        for tracked in list(self._tracked.values()):
            finding = tracked.level
            if finding is None:
                continue
            rule = self._rule_named(tracked.labels["rule"], finding)
            if rule is None:
                continue
            # Event time of the last finding, moved on by the wall time since it arrived.
            t = finding.t + max(0.0, now - tracked.last_finding_at)
            alert = self._advance_finding(rule, finding, t, fresh=False)
            if alert:
                out.append(alert)
        return out

    def _rule_named(self, name: str, finding: Alert) -> Rule | None:
        for rule in self._by_detector.get(finding.rule, ()):
            if rule.name == name:
                return rule
        return self._builtin(finding.rule, finding.severity) if name == finding.rule else None

    def note_activity(self, run: str) -> None:
        """Record that something of `run` arrived now (see resolve_quiet)."""
        self._run_seen[run] = self._clock()

    def resolve_quiet(self, timeout_s: float) -> list[Alert]:
        """Resolve detector alerts whose end will not be reported (wall clock).

        Detectors report when a condition clears, and a firing alert whose condition
        still holds stays firing for as long as its run reports anything (a dead rank
        stays an open incident until it returns). Some ends are never seen, though: a run
        that stops altogether, an alert restored after a restart whose detector starts
        afresh, a rule whose keep_firing_for is counted in steps. Like Alertmanager's
        resolve_timeout, such an alert resolves after `timeout_s`: one still holding when
        its run has been silent that long, any other with no new finding that long. A
        pending alert ends withdrawn instead (a condition rule's too, once its run has been
        silent that long).
        """
        now = self._clock()
        out = []
        for fp, tracked in list(self._tracked.items()):
            last = tracked.last
            if last is None:
                continue
            if not tracked.detector:
                # A condition rule's pending alert of a run gone silent: its `for` will
                # never elapse, so it is withdrawn rather than left pending for ever.
                if last.status != "pending":
                    continue
                if now - self._run_seen.get(last.run, tracked.last_finding_at) < timeout_s:
                    continue
                del self._tracked[fp]
                out.append(_ended(last, now, f"run {last.run} silent for {timeout_s:g}s"))
                continue
            holding = tracked.level is not None and _holds(tracked.level)
            if holding:
                run_seen = max(self._run_seen.get(last.run, 0.0), tracked.last_finding_at)
                if now - run_seen < timeout_s:
                    continue
                why = f"run {last.run} silent for {timeout_s:g}s"
            else:
                if now - tracked.last_finding_at < timeout_s:
                    continue
                why = f"no new evidence for {timeout_s:g}s"
            del self._tracked[fp]
            out.append(_ended(last, now, why))
        self._forget_quiet_runs(now, timeout_s)
        return out

    def _forget_quiet_runs(self, now: float, timeout_s: float) -> None:
        tracked_runs = {t.labels["run"] for t in self._tracked.values()}
        quiet = set()
        for run, seen in list(self._run_seen.items()):
            if now - seen >= timeout_s and run not in tracked_runs:
                del self._run_seen[run]
                quiet.add(run)
        # The ranks' latest values a cross-rank condition compares, of runs now forgotten:
        # kept, they grew with every run the engine ever saw.
        for key in [k for k in self._peers if k[0] in quiet]:
            del self._peers[key]

    def on_window_update(self, update: WindowUpdate | StageUpdate) -> list[Alert]:
        """Evaluate every condition rule on the stats this update carries."""
        self.note_activity(update.run)
        out: list[Alert] = []
        for rule in self._conditions:
            cond = rule.condition
            assert cond is not None
            window = update.windows.get(cond.window)
            if not window or cond.metric not in window:
                continue
            labels = _selector_labels(update.run, update.rank, cond.metric)
            if not match_all(rule.selector, labels):
                continue
            value = getattr(window[cond.metric], cond.stat, None)
            peers = None
            if isinstance(cond.threshold, AcrossRanks):
                across = cond.threshold
                peer_window = update.windows.get(across.window, {})
                if across.metric in peer_window:
                    peer_value = getattr(peer_window[across.metric], cond.stat, None)
                    key = (update.run, across.window, across.metric, cond.stat)
                    if peer_value is not None:
                        self._peers[key][update.rank] = peer_value
                peers = self._peers.get((update.run, across.window, across.metric, cond.stat))
            holds, threshold = cond.evaluate(value, peers)
            values: dict[str, object] = {"value": value, "threshold": threshold}
            alert = self._advance(
                rule,
                update.run,
                update.rank,
                cond.metric,
                holds,
                update.t,
                update.step,
                values,
                "",
                {"value": value, "threshold": threshold},
            )
            if alert:
                out.append(alert)
        return out

    def _advance(
        self,
        rule: Rule,
        run: str,
        rank: int | None,
        metric: str | None,
        active: bool,
        t: float,
        step: int | None,
        values: dict[str, object],
        fallback_summary: str,
        evidence: dict[str, float | None],
        from_detector: bool = False,
        level: Alert | None = None,
        affected: tuple[str, ...] = (),
        description: str = "",
        extra_labels: dict[str, str] | None = None,
    ) -> Alert | None:
        fp = fingerprint(rule.name, run, rank, metric, rule.labels)
        tracked = self._tracked.get(fp)
        if tracked is None:
            if not active:
                return None  # nothing to clear: do not track series that never fired
            labels = {**(extra_labels or {}), **_labels(rule, run, rank, metric)}
            tracked = self._tracked[fp] = _Tracked(AlertState(), labels)
        if level is not None:  # fresh evidence keeps its alert from resolve_quiet
            tracked.detector = True
            tracked.last_finding_at = self._clock()
            tracked.level = level
            tracked.reassert_by = None
        notice = tracked.state.evaluate(active, t, step, rule.timing)
        if notice is None:
            return None
        context = {
            **values,
            "run": run,
            "rank": rank,
            "metric": metric,
            "step": step,
            "rule": rule.name,
            "labels": rule.labels,
        }
        status: AlertStatus
        if notice is Notice.RESOLVED or notice is Notice.WITHDRAWN:
            status = "resolved" if notice is Notice.RESOLVED else "withdrawn"
            # A detector's cleared flag says what cleared and when; a condition rule's
            # resolution repeats what fired (or was pending).
            summary = (
                (fallback_summary if from_detector else "")
                or (tracked.last.summary if tracked.last else fallback_summary)
                or rule.name
            )
        else:
            status = "pending" if notice is Notice.PENDING else "firing"
            summary = render(rule.summary, context) if rule.summary else fallback_summary
            summary = summary or f"{rule.name} on run {run}" + (
                f" rank {rank}" if rank is not None else ""
            )
        alert = Alert(
            fingerprint=fp,
            rule=rule.name,
            status=status,
            severity=rule.severity,
            run=run,
            rank=rank,
            metric=metric,
            step=step,
            t=t,
            raised_at=self._clock(),
            active_since=tracked.state.active_since_t if status in OPEN_STATUSES else None,
            summary=summary,
            description=render(rule.description, context) if rule.description else description,
            labels={
                **(extra_labels or {}),
                **{k: v for k, v in rule.labels.items() if k != "builtin"},
            },
            evidence=evidence
            if status in OPEN_STATUSES or from_detector
            else (tracked.last.evidence if tracked.last else {}),
            action=rule.action if status == "firing" and notice is Notice.FIRING else None,
            suppressed_by=self._suppressed(tracked.labels, fp, self._clock()),
            affected=list(affected),
        )
        if status in OPEN_STATUSES:
            tracked.last = alert
        else:  # resolved, or withdrawn before it fired: forget it
            del self._tracked[fp]
        return alert

    def _suppressed(self, labels: dict[str, str], fp: str, now: float) -> str | None:
        silence = silenced_by(self.silences, labels, now)
        if silence is not None:
            return f"silence:{silence.id}"
        # Only firing alerts inhibit others (Alertmanager's rule): a pending one may never fire.
        firing = [
            t.labels
            for f, t in self._tracked.items()
            if f != fp and t.last is not None and t.last.status == "firing"
        ]
        source = inhibited_by(labels, firing, self.inhibit_rules)
        if source is not None:
            return f"inhibited:{source['rule']}"
        return None

    def firing(self) -> list[Alert]:
        """The alerts now firing."""
        return [t.last for t in self._tracked.values() if t.last and t.last.status == "firing"]

    def pending(self) -> list[Alert]:
        """The alerts now pending (condition holding, `for` not yet elapsed)."""
        return [t.last for t in self._tracked.values() if t.last and t.last.status == "pending"]


def _holds(finding: Alert) -> bool:
    """Whether a detector finding says its condition holds (an episode starting) rather
    than cleared."""
    return finding.status == "firing"


def _ended(last: Alert, now: float, why: str) -> Alert:
    """The end of an open alert whose condition is no longer seen: resolved if it fired,
    withdrawn if it was pending."""
    return last.model_copy(
        update={
            "status": "resolved" if last.status == "firing" else "withdrawn",
            "raised_at": now,
            "active_since": None,
            "action": None,
            "suppressed_by": None,
            "summary": f"{last.summary} ({why})",
        }
    )
