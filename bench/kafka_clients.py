"""What one Kafka message costs the sending process: kafka-python (the SDK's publisher)
against librdkafka (confluent-kafka), on the embedded tansu broker.

The SDK sends one message per rank per flush interval (0.2 s), so a client's fixed cost
per message, not its cost per byte, is what it adds to a training process. For each
client: connect, send one message and wait for it (the connection is a one-time cost),
then measure the process CPU (every thread: kafka-python's network thread, librdkafka's
threads) of `--seconds` idle and of `--seconds` sending `--rate` messages per second of
`--size` bytes (incompressible, lz4 as the SDK sends), waiting for the last delivery.
A client's cost per message is (sending CPU - idle CPU) / messages. kafka-python's
``send()`` call itself, on the caller's thread, is timed apart: in the SDK that is the
publisher thread.

Run: ``python bench/kafka_clients.py`` (about half a minute). Prints figures; not a test.
Last line: ``kafka_python_ms_per_msg=… send_call_ms=… librdkafka_ms_per_msg=… ratio=…``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from producer_overhead import broker  # bench/ is on the path of a bench script

from producers.publisher import close_producer, kafka_producer
from stepstream.topics import Topics


def cpu_per_message(
    send: Callable[[bytes], object],
    flush: Callable[[], object],
    seconds: float,
    rate: float,
    size: int,
) -> tuple[float, float, int]:
    """(process CPU s per message over idle, s of the send calls per message, messages)."""
    values = [os.urandom(size) for _ in range(16)]  # made before the clock runs
    flush()
    start = time.process_time()
    time.sleep(seconds)
    idle = (time.process_time() - start) / seconds
    sent = 0
    calls = 0.0
    start = time.process_time()
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        a = time.thread_time()
        send(values[sent % len(values)])
        calls += time.thread_time() - a
        sent += 1
        time.sleep(1 / rate)
    flush()
    elapsed = time.monotonic() - began
    used = time.process_time() - start - idle * elapsed
    return used / sent, calls / sent, sent


def main() -> None:
    """Measure both clients and print the figures; the last line is the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--size", type=int, default=30_000, help="bytes per message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, broker(Path(name)) as settings:
        topic = Topics(settings.topic_prefix).telemetry
        ours = kafka_producer(settings)
        ours.send(topic, key=b"k", value=b"warm-up").get(10)
        python_ms, call_ms, n = cpu_per_message(
            lambda v: ours.send(topic, key=b"k", value=v),
            lambda: ours.flush(10),
            args.seconds,
            args.rate,
            args.size,
        )
        close_producer(ours, 5)
        print(
            f"kafka-python: {python_ms * 1e3:.2f} ms CPU per message ({n} messages of "
            f"{args.size} B), of which the send() call {call_ms * 1e3:.2f} ms"
        )
        try:
            from confluent_kafka import Producer
        except ImportError:
            print("confluent-kafka is not installed: pip install confluent-kafka")
            rd_ms = float("nan")
        else:
            rd = Producer(
                {
                    "bootstrap.servers": settings.kafka_bootstrap,
                    "compression.type": settings.kafka_compression or "none",
                    "linger.ms": settings.kafka_linger_ms,
                }
            )
            rd.produce(topic, key=b"k", value=b"warm-up")
            rd.flush(10)

            def produce(value: bytes) -> None:
                rd.produce(topic, key=b"k", value=value)
                rd.poll(0)

            rd_ms, _, n = cpu_per_message(
                produce, lambda: rd.flush(10), args.seconds, args.rate, args.size
            )
            print(f"librdkafka (confluent-kafka): {rd_ms * 1e3:.2f} ms CPU per message")
            del rd  # closes its connections before the broker goes
    print(
        f"kafka_python_ms_per_msg={python_ms * 1e3:.2f} send_call_ms={call_ms * 1e3:.2f} "
        f"librdkafka_ms_per_msg={rd_ms * 1e3:.2f} ratio={python_ms / rd_ms:.1f}"
    )


if __name__ == "__main__":
    main()
