"""Fault injection under live training: the long versions of tests/integration/test_faults.py.

Two gloo CPU ranks log ``counter = step`` through the public SDK while one fault is
injected at a time (broker paused 30 s with SIGSTOP, broker killed and restarted, processor
and sink SIGKILLed and restarted, Redis killed and restarted, a relay adding latency and
resetting the publishers' connections); then the series are read back with
``MetricsReader`` and the alerts counted. Prints a table and the summary line
``lost=… duplicate_alerts=… max_log_stall_ms=…``.

    .venv/bin/python bench/faults.py [--pause 30] [--relay 30] [--only NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fault_harness import (
    HEADER,
    MEMORY_REDIS,
    FaultStack,
    Verdict,
    faults,
    scenario,
    summary,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=30.0, help="broker SIGSTOP seconds")
    parser.add_argument("--relay", type=float, default=30.0, help="relay fault seconds")
    parser.add_argument("--step", type=float, default=0.05, help="seconds per training step")
    parser.add_argument("--only", default="", help="run faults whose name starts with this")
    args = parser.parse_args()
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="stepstream-faults-") as tmp:
        stack = FaultStack(Path(tmp), relay=True, relay_reset_every_s=2.0)
        stack.start()
        try:
            for name, inject in faults(stack, args.pause, args.relay, True).items():
                if not name.startswith(args.only):
                    continue
                fault_s = args.pause if "SIGSTOP" in name else args.relay if "relay" in name else 3
                steps = int((1.5 + fault_s + 8) / args.step)
                verdict = scenario(stack, name, inject, steps, step_s=args.step)
                verdicts.append(verdict)
                print(
                    verdict.row() if len(verdicts) > 1 else HEADER + "\n" + verdict.row(),
                    flush=True,
                )
        finally:
            stack.stop()
    kept = [v for v in verdicts if v.fault != MEMORY_REDIS]
    memory = [v for v in verdicts if v.fault == MEMORY_REDIS]
    if memory:
        print(
            f"note: '{MEMORY_REDIS}' is the embedded stack's Redis (nothing on disk): the "
            f"{memory[0].lost} points (and the alerts) stored before the restart are gone by "
            "design; production Redis runs with appendonly (docker-compose.production.yml)"
        )
    if kept:
        print(summary(kept))


if __name__ == "__main__":
    main()
