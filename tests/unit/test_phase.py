"""The training thread's phase from watch()'s hooks and monitor.phase(), carried by the
heartbeats, and the stack captured once when a phase lasts too long."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from torch import nn

from producers.periodic import Ticker
from producers.phase import PhaseClock, StackCapture, bounded_stack
from producers.publisher import PublisherStats
from producers.watch import Watch
from stepstream import vocabulary as vocab
from stepstream.contract import RecordKind


class Queue:
    """Stands in for the publisher: keeps what would have been enqueued."""

    disabled = False

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.stats = PublisherStats()

    def enqueue(self, step: Any, kind: Any, values: Any, text: Any = None) -> None:
        self.items.append((step, kind, values, text))


def test_watch_hooks_walk_the_phases_of_a_step() -> None:
    clock = PhaseClock()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[str | None] = []
    model[2].register_forward_hook(lambda *_: seen.append(clock.current[0]))
    watch = Watch(Queue().enqueue, model, opt, phases=clock)
    assert clock.current[0] is None  # nothing known before the first step
    for _ in range(3):
        loss = model(torch.randn(3, 4)).pow(2).mean()
        after_forward = clock.current[0]
        loss.backward()
        opt.step()
        opt.zero_grad()
    watch.remove()
    assert seen == ["forward"] * 3
    assert after_forward == "backward"
    assert clock.current[0] == "data"
    assert len(clock.step_times) == 2  # from the second step on


def test_declared_phase_resumes_the_one_before_and_rejects_unknown_names() -> None:
    clock = PhaseClock()
    clock.enter("data")
    with clock.phase("checkpoint"):
        assert clock.current[0] == "checkpoint"
    assert clock.current[0] == "data"
    with pytest.raises(ValueError, match="unknown phase"), clock.phase("lunch"):
        pass


def test_heartbeats_carry_the_phase_and_a_stuck_phase_sends_its_stack_once() -> None:
    clock = PhaseClock()
    for _ in range(5):
        clock.step_times.append(0.01)  # 10 ms steps: the floor (0.2 s here) decides
    queue = Queue()
    ticker = Ticker(
        queue,  # type: ignore[arg-type]
        lambda: 7,
        lambda: "running",
        1.0,
        0,
        phases=clock,
        stacks=StackCapture(clock, floor_s=0.2, max_bytes=4096),
    )
    ticker.heartbeat()
    assert vocab.HEARTBEAT_PHASE not in queue.items[0][2]  # phase unknown: not sent
    release = threading.Event()

    def blocked_in_checkpoint() -> None:
        clock.thread_id = threading.get_ident()
        with clock.phase("checkpoint"):
            write_checkpoint_slowly(release)

    worker = threading.Thread(target=blocked_in_checkpoint)
    worker.start()
    try:
        time.sleep(0.05)
        queue.items.clear()
        ticker.heartbeat()  # 0.05 s in: not stuck yet
        values = queue.items[0][2]
        assert values[vocab.HEARTBEAT_PHASE] == vocab.PHASE_CODES["checkpoint"]
        assert 0.0 < values[vocab.HEARTBEAT_PHASE_S] < 0.2
        assert [k for _, k, _, _ in queue.items] == [RecordKind.HEARTBEAT, RecordKind.SYSTEM]
        time.sleep(0.25)
        queue.items.clear()
        ticker.heartbeat()
        ticker.heartbeat()  # once per stuck phase
        stacks = [(v, t) for _, k, v, t in queue.items if vocab.HEARTBEAT_STACK in v]
        assert len(stacks) == 1
        values, text = stacks[0]
        assert "write_checkpoint_slowly" in text and "release.wait" in text
        assert values[vocab.HEARTBEAT_STACK] == float(len(text))
        assert values[vocab.HEARTBEAT_STATUS] == vocab.STATUS_CODES["running"]
    finally:
        release.set()
        worker.join()


def write_checkpoint_slowly(release: threading.Event) -> None:
    release.wait(10)


def test_bounded_stack_keeps_the_innermost_frames() -> None:
    frames = [f'  File "f.py", line {i}, in level{i}\n    call()\n' for i in range(500)]
    text = bounded_stack(frames, 4096)
    assert len(text.encode()) <= 4096
    assert text.startswith("  ... ") and "outer frame(s) left out" in text
    assert text.endswith("in level499\n    call()\n")
    assert bounded_stack(frames[:3], 4096) == "".join(frames[:3])


def test_declared_phases_add_their_seconds_once_until_taken() -> None:
    clock = PhaseClock()
    with clock.phase("eval"):
        time.sleep(0.02)
        with clock.phase("checkpoint"):  # inside eval: counted in eval's seconds only
            time.sleep(0.01)
    with clock.phase("checkpoint"):
        time.sleep(0.01)
    taken = clock.take_declared()
    assert set(taken) == {"eval", "checkpoint"}
    assert 0.03 <= taken["eval"] < 0.2 and 0.01 <= taken["checkpoint"] < 0.1
    assert clock.take_declared() == {}
