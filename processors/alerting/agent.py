"""Wires the alert engine into the processor app: detector findings and window updates in
(both keyed by run), alert transitions and control actions out. Rules hot-reload from
``STEPSTREAM_RULES_FILE``; silences are read from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faust

from processors.alerting.engine import AlertEngine
from processors.alerting.rules import Rule, load_rules
from processors.alerting.silence_store import load_silences
from processors.forward import StageUpdate
from stepstream.contract import Alert, ControlAction, WindowUpdate, run_key
from stepstream.errors import ConfigError
from stepstream.faust_seam import on_partitions_revoked
from stepstream.keys import RedisKeys
from stepstream.redis_client import async_client
from stepstream.settings import Settings
from stepstream.topics import Topics

log = logging.getLogger(__name__)

RELOAD_S = 2.0
#: How often detector-driven alerts advance between findings (`for` / `keep_firing_for`).
TICK_S = 0.25


class RuleFile:
    """The rules of a file, re-read when its modification time changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mtime: float | None = None

    def load(self) -> list[Rule]:
        """The file's rules now, at worker start (none without a file). A broken or
        unreadable file raises ConfigError with its file, line and reason: a worker must
        not run without the rules its user wrote."""
        if self.path is None:
            return []
        # The time before the read: a write during the read is picked up by a reload.
        with contextlib.suppress(OSError):
            self._mtime = self.path.stat().st_mtime
        try:
            return load_rules(self.path)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (fix STEPSTREAM_RULES_FILE and start again; "
                f"'stepstream rules check {self.path}' checks it)"
            ) from exc

    def changed(self) -> list[Rule] | None:
        """New rules if the file changed since the last call; None otherwise. A broken
        file is logged with its line numbers and the previous rules stay in force."""
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            return load_rules(self.path)
        except ConfigError as exc:
            log.error("rule file not reloaded, keeping the previous rules:\n%s", exc)
            return None


class Alerting:
    """The alert engine inside the processor worker.

    The stages hand it their detector findings and window updates in-process, so alerts cost
    no extra Kafka hop. The engine sees what this worker processes: with several
    processor workers, cross-rank conditions and inhibition see the ranks whose
    partitions this worker owns (all of them with one worker).
    """

    def __init__(self, app: faust.App, settings: Settings) -> None:
        topics = Topics(settings.topic_prefix)
        raw: dict[str, Any] = {
            "key_serializer": "raw",
            "value_serializer": "raw",
            "partitions": settings.partitions,
        }
        self._alerts = app.topic(topics.alerts, **raw)
        self._control = app.topic(topics.control, **raw)
        self._settings = settings
        self._rule_file = RuleFile(settings.rules_file)
        rules = self._rule_file.load()
        if settings.rules_file is not None:
            log.warning("alert rules from %s: %d rules", settings.rules_file, len(rules))
        self.engine = AlertEngine(rules, clock=time.time)
        self._keys = RedisKeys(settings.key_prefix)
        self._redis: Any = None
        self._silences_ok = True
        #: (run, detector alerts?) taken over: see take_over.
        self._taken_over: set[tuple[str, bool]] = set()
        self._sending = asyncio.Lock()
        app.timer(RELOAD_S)(self.refresh)
        app.timer(TICK_S)(self.tick)
        on_partitions_revoked(app, self._on_revoked)

    async def emit(self, transitions: list[Alert]) -> None:
        """Send alert transitions, and the actions of unsuppressed firing ones, in the order
        the engine made them, whichever task (an agent, a timer) calls."""
        # The stage-2 agent and the timers call this concurrently, and a send awaits: two
        # unguarded calls could reach the topic in either order. The soak (bench/soak.py)
        # saw a run's "resolved" stored before its "firing", which then stayed active. The
        # lock is taken before any await here, right after the engine ran, so sends keep
        # the engine's order (asyncio locks wake waiters first come, first served).
        async with self._sending:
            for alert in transitions:
                await self._alerts.send(key=run_key(alert.run), value=alert.to_bytes())
                action = ControlAction.from_alert(alert) if alert.suppressed_by is None else None
                if action is not None:
                    await self._control.send(key=run_key(alert.run), value=action.to_bytes())

    async def on_findings(self, findings: list[Alert]) -> None:
        """Detector findings of the stages (their alert messages, see `flag_to_alert`)."""
        for finding in findings:
            await self.take_over(finding.run, detectors=True)
            await self.emit(self.engine.on_finding(finding))

    async def on_updates(self, updates: Sequence[WindowUpdate | StageUpdate]) -> None:
        """Window updates of stage 1: condition rules, and the runs' activity."""
        for update in updates:
            await self.take_over(update.run, detectors=False)
            if self.engine.has_conditions:
                await self.emit(self.engine.on_window_update(update))  # notes activity too
            else:
                self.engine.note_activity(update.run)

    async def take_over(self, run: str, detectors: bool) -> None:
        """The first time this worker sees `run`, restore the run's open (firing and
        pending) alerts from Redis, so a restart or a moved partition neither pages again
        for a condition that still holds nor leaves alerts active that nobody would end.

        Only the alerts this worker raises for the run: detector alerts (`detectors`) where
        its findings arrive (the run's summaries partition), condition-rule alerts where
        its window updates are made (its ranks' telemetry partitions). The two may be
        different workers: one that took over the other's alerts would resolve them as
        not re-asserted while their owner still holds them firing, and that owner would
        then re-assert a new episode of the same alert without a page.
        """
        if (run, detectors) in self._taken_over:
            return
        try:
            client = self._redis_client()
            stored = await client.hvals(self._keys.active_alerts(run))
            alerts = [Alert.model_validate_json(body) for body in stored]
        except Exception as exc:  # Redis away: alerting goes on without the history
            log.warning("firing alerts of run %s not restored: %s", run, exc)
            alerts = []
        self._taken_over.add((run, detectors))
        taken = self.engine.restore(alerts, self._settings.failover_reassert_s, detectors)
        if taken:
            log.warning("restored %d open alert(s) of run %s from Redis", taken, run)

    def forget_runs(self, runs: Iterable[str]) -> None:
        """Runs the stages forgot (idle for ``STEPSTREAM_STATE_IDLE_S``): one that comes back
        is taken over afresh, its firing alerts restored from Redis (see take_over). Kept,
        the set of runs taken over grew with every run the worker ever saw."""
        gone = set(runs)
        self._taken_over = {(run, d) for run, d in self._taken_over if run not in gone}

    def taken_over(self, run: str) -> bool:
        """True once this worker restored `run`'s firing alerts (until it forgets it)."""
        return any((run, d) in self._taken_over for d in (True, False))

    async def _on_revoked(self, revoked: int) -> None:
        # Runs may come back after another worker changed their alerts: forget them all
        # and restore each from Redis when it is next seen (see take_over).
        if not revoked:  # the first assignment: nothing was ours yet
            return
        self._taken_over.clear()
        self.engine.forget_all()

    def _redis_client(self) -> Any:
        if self._redis is None:
            self._redis = async_client(self._settings.redis_url, self._settings.redis_cluster)
        return self._redis

    async def tick(self) -> None:
        """Let `for` and `keep_firing_for` of detector rules elapse between findings, and
        resolve taken-over alerts their detectors did not re-assert."""
        await self.emit(self.engine.tick() + self.engine.resolve_unasserted())

    async def refresh(self) -> None:
        """Reload a changed rule file, re-read silences, resolve quiet detector alerts."""
        rules = self._rule_file.changed()
        if rules is not None:
            await self.emit(self.engine.set_rules(rules))
            log.warning(
                "alert rules loaded from %s: %d rules", self._settings.rules_file, len(rules)
            )
        try:
            self.engine.silences = await load_silences(self._redis_client(), self._keys)
            if not self._silences_ok:
                log.warning("silences loaded from Redis again")
            self._silences_ok = True
        except Exception as exc:  # Redis away, ACL or TLS wrong: keep the silences we had
            # Once per failure streak: a refresh every 2 s would flood the log.
            if self._silences_ok:
                log.warning(
                    "silences not refreshed from %s (%s: %s); keeping %d known silences. "
                    "Check STEPSTREAM_REDIS_URL and the Redis user's ACL.",
                    self._keys.silences(),
                    type(exc).__name__,
                    exc,
                    len(self.engine.silences),
                )
            self._silences_ok = False
        await self.emit(self.engine.resolve_quiet(self._settings.resolve_timeout_s))
