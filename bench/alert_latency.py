"""Alert latency end to end: from `log()` of a NaN on a rank to the alert on the alerts
topic, in Redis (pub/sub, published by the sink as it writes) and at a webhook receiver on
loopback, each fault on a run of its own (a run's later NaNs join its first incident);
then the dead-rank alert after a rank is killed, in heartbeat intervals.

Runs its own embedded stack (tansu, Valkey, processor and sink workers) and stops it.
Background load: 2 ranks logging 20 values per step at 100 steps/s each.
Prints figures, not a test. The last line is
``p50_ms=… p99_ms=… dead_rank_intervals=…`` (p50/p99 at the webhook).

    python bench/alert_latency.py [--faults 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

import producers
from query.alert_feed import AlertFeed
from stepstream.keys import RedisKeys
from stepstream.settings import Settings, WebhookTarget
from stepstream.stack import LocalStack, settings_env


class Receiver:
    """Webhook receiver that stamps each run's first NaN alert with its arrival time."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.notifications: set[str] = set()
        arrived, notifications = self.arrived, self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                for alert in body["alerts"]:  # one notification: a run's transitions
                    if alert["rule"] == "nonfinite" and alert["status"] == "firing":
                        arrived.setdefault(body["run"], now)
                        notifications.add(body["idempotency_key"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def background_load(settings: Settings, stop: threading.Event) -> None:
    """Two ranks of another run logging 20 values per step at about 100 steps/s."""
    monitors = [producers.init("bench-load", rank=r, world=2, settings=settings) for r in (0, 1)]
    step = 0
    while not stop.is_set():
        for m in monitors:
            m.log(step, **{f"m{i}": float(i + step % 7) for i in range(20)})
        step += 1
        time.sleep(0.01)
    for m in monitors:
        m.close()


DEAD_RANK = """
import sys, time, producers
from stepstream.stack import load_settings
m = producers.init(sys.argv[1], rank=1, world=2, settings=load_settings())
step = 0
while True:
    m.log(step, loss=1.0); step += 1; time.sleep(0.1)
"""


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between faults")
    parser.add_argument(
        "--flush-interval-s",
        type=float,
        default=Settings.model_fields["flush_interval_s"].default,
        help="the SDK's hold (default: the SDK's default)",
    )
    args = parser.parse_args()

    receiver = Receiver()
    state_dir = tempfile.mkdtemp(prefix="stepstream-alert-bench-")
    base = Settings(
        state_dir=state_dir,
        topic_prefix=f"ab{uuid.uuid4().hex[:6]}",
        webhooks=[WebhookTarget(url=receiver.url, backoff_s=0.05)],
        heartbeat_interval_s=1.0,
        system_interval_s=0,
        # The SDK's default hold (1 s): a NaN is urgent and must go at once anyway, which
        # is what this measures (`--flush-interval-s` to compare with a short hold).
        flush_interval_s=args.flush_interval_s,
    )
    stack = LocalStack(base)
    finished = False
    stop_load = threading.Event()
    dead: subprocess.Popen[bytes] | None = None
    try:
        state = stack.start()
        live = base.model_copy(
            update={"kafka_bootstrap": state.kafka_bootstrap, "redis_url": state.redis_url}
        )
        # One run per fault: a run's non-finite findings are one incident (its origin), so
        # NaNs of one run after the first raise no alert of their own to time.
        prefix = f"faults-{uuid.uuid4().hex[:6]}"
        load = threading.Thread(target=background_load, args=(live, stop_load), daemon=True)
        load.start()

        on_topic: dict[str, float] = {}
        in_redis: dict[str, float] = {}
        feed = AlertFeed(live, from_beginning=False)
        pubsub = redis.Redis.from_url(live.redis_url).pubsub()
        pubsub.psubscribe(RedisKeys(live.key_prefix).alerts_channel_pattern())

        def listen() -> None:
            deadline = time.monotonic() + 60 + args.faults * args.gap
            while time.monotonic() < deadline and len(on_topic) < args.faults:
                now_alerts = feed.poll(0.1)
                now = time.time()
                for alert in now_alerts:
                    if alert.rule == "nonfinite" and alert.run.startswith(prefix):
                        on_topic.setdefault(alert.run, now)
            feed.close()

        def listen_redis() -> None:
            deadline = time.monotonic() + 60 + args.faults * args.gap
            while time.monotonic() < deadline and len(in_redis) < args.faults:
                message = pubsub.get_message(timeout=0.1)
                if message and message["type"] == "pmessage":
                    body = json.loads(message["data"])
                    if body.get("rule") == "nonfinite" and body["run"].startswith(prefix):
                        in_redis.setdefault(body["run"], time.time())
            pubsub.close()

        listeners = [threading.Thread(target=listen), threading.Thread(target=listen_redis)]
        for t in listeners:
            t.start()
        logged: dict[str, float] = {}
        # A fault's monitor is closed 2 s after its NaN, off the injecting thread, so a few
        # dozen are open at once rather than all of them.
        closing: queue.Queue[tuple[float, producers.Monitor] | None] = queue.Queue()

        def closer() -> None:
            while (item := closing.get()) is not None:
                time.sleep(max(0.0, item[0] + 2.0 - time.time()))
                item[1].close()

        closers = threading.Thread(target=closer)
        closers.start()
        print(
            f"injecting {args.faults} NaN faults, one run each, {args.gap * 1000:.0f} ms "
            "apart (plus a monitor's start) ...",
            flush=True,
        )
        for i in range(args.faults):
            run = f"{prefix}-{i:04d}"
            monitor = producers.init(run, rank=0, world=1, settings=live)
            monitor.log(0, loss=1.0)
            logged[run] = time.time()
            monitor.log(1, loss=math.nan)
            closing.put((logged[run], monitor))
            time.sleep(args.gap)
        closing.put(None)
        for t in listeners:
            t.join()
        deadline = time.monotonic() + 30
        while len(receiver.arrived) < args.faults and time.monotonic() < deadline:
            time.sleep(0.1)
        closers.join()

        def figures(where: str, arrived: dict[str, float]) -> list[float]:
            lat = [(arrived[m] - logged[m]) * 1000 for m in logged if m in arrived]
            if lat:
                print(
                    f"{where:<8} n={len(lat):>4}/{args.faults}  "
                    f"p50={percentile(lat, 0.5):7.1f} ms  "
                    f"p99={percentile(lat, 0.99):7.1f} ms  max={max(lat):7.1f} ms"
                )
            else:
                print(f"{where:<8} none arrived")
            return lat

        figures("topic", on_topic)
        figures("redis", in_redis)
        webhook = figures("webhook", receiver.arrived)
        print(
            f"webhook notifications: {len(receiver.notifications)} for {len(receiver.arrived)} "
            f"firing transitions (grouped per run: wait {live.alert_group_wait_s:g} s, "
            f"interval {live.alert_group_interval_s:g} s)"
        )

        # Dead rank: rank 1 dies (SIGKILL) while rank 0 goes on.
        dead_run = f"dead-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, **settings_env(live)}
        dead = subprocess.Popen([sys.executable, "-c", DEAD_RANK, dead_run], env=env)
        alive = producers.init(dead_run, rank=0, world=2, settings=live)
        with AlertFeed(live, run=dead_run, from_beginning=False) as dead_feed:
            for step in range(50):
                alive.log(step, loss=1.0)
                time.sleep(0.1)
            dead.send_signal(signal.SIGKILL)
            dead.wait()
            killed = time.time()
            intervals = math.nan
            step = 50
            while time.time() - killed < 60 and math.isnan(intervals):
                alive.log(step, loss=1.0)
                step += 1
                for alert in dead_feed.poll(0.1):
                    if alert.rule == "dead_rank" and alert.rank == 1:
                        intervals = (time.time() - killed) / live.heartbeat_interval_s
        alive.close()
        print(
            f"dead rank alert after {intervals:.2f} heartbeat intervals "
            f"({live.heartbeat_interval_s:g} s each)"
        )
        p50 = percentile(webhook, 0.5) if webhook else math.nan
        p99 = percentile(webhook, 0.99) if webhook else math.nan
        print(f"p50_ms={p50:.1f} p99_ms={p99:.1f} dead_rank_intervals={intervals:.2f}")
        finished = True
    finally:
        stop_load.set()
        if dead is not None and dead.poll() is None:
            dead.kill()
            dead.wait()
        stack.stop()
        receiver.close()
        # The workers' logs explain a failed run: kept then, removed otherwise.
        if finished:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"worker logs kept in {state_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
