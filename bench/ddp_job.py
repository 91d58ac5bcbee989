"""A real data-parallel training job (torch.distributed on gloo, CPU, DistributedDataParallel)
instrumented only as the README shows, with one injected fault on cue.

Started once per rank by `bench/detection.py` and tests/integration/test_detection_e2e.py
with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (as torchrun sets them) and the
stack's STEPSTREAM_* variables. The instrumentation is exactly the README's:
``producers.init(run)``, ``monitor.watch(model, optimizer, every=1)``,
``monitor.log(step, loss=loss.detach())`` and ``monitor.log_eval(step, val_loss=...)``
every 20 steps, and ``monitor.phase("checkpoint")`` around the checkpoint of the
``ckpt_hang`` fault (and ``monitor.phase("eval")``/``("checkpoint")`` around rank 0's
duties in ``rank0_duties``). ``--work-ms`` gives the forward emulated device time, which
``failslow`` (one rank's forward 1 + magnitude times longer), ``jitter`` (every rank's
forward 0.25-1.75x per step, equal means) and ``slowdown`` (every rank's input wait grows
by magnitude x work) act on. Hang classes: ``extra_collective`` (the fault rank, after its
backward, enters an all-reduce its peers never call: a metric synced on one rank only; it
gives up after magnitude s and carries on) and ``compute_hang`` (the fault rank's forward
runs a matmul loop for magnitude s). The job prints one JSON line
``{"fault": ..., "onset_t": ..., "step": ...}`` when it injects its fault (wall clock,
the time the fault starts to show).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

import producers

FAULTS = (
    "none",
    "nan",
    "lr_blowup",
    "bad_batch",
    "vanish",
    "explode",
    "plateau",
    "overfit",
    "slow_input",
    "crash",
    "corrupt_grads",
    "data_hang",
    "ckpt_hang",
    "leak",
    "warmup",
    "stagger",
    "failslow",
    "slowdown",
    "jitter",
    "rank0_duties",
    "extra_collective",
    "compute_hang",
    "preempt",
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--start-step", type=int, default=0, help="first step (a restart resumes here)"
    )
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--fault-rank", type=int, default=0)
    parser.add_argument("--fault-step", type=int, default=150)
    parser.add_argument("--magnitude", type=float, default=1.0, help="fault-specific size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.5, help="label noise (0..1)")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="extra compute per step")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument(
        "--work-ms",
        type=float,
        default=0.0,
        help="device time of the model's forward per step (slept inside it, as a forward "
        "waiting on an accelerator would): what fail-slow and jitter faults scale",
    )
    return parser.parse_args()


class Net(nn.Module):
    """Two ReLU layers and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        #: Seconds of emulated device time the next forward takes (see --work-ms).
        self.work_s = 0.0
        #: Seconds the next forward spends in a long compute op (the compute_hang fault).
        self.stall_s = 0.0
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.work_s > 0 and self.training:
            time.sleep(self.work_s)
        if self.stall_s > 0:
            # A long compute op (a runaway loop of big matmuls): real CPU work, releasing
            # the GIL inside each op as a kernel launch would.
            until, a = time.monotonic() + self.stall_s, torch.randn(256, 256)
            while time.monotonic() < until:
                a = torch.tanh(a @ a)
            self.stall_s = 0.0
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def announce(fault: str, step: int, rank: int) -> None:
    print(json.dumps({"fault": fault, "onset_t": time.time(), "step": step, "rank": rank}))
    sys.stdout.flush()


def main() -> None:
    args = parse()
    torch.set_num_threads(1)  # ranks share a few cores; threads would only contend
    # long enough for the hang jobs' peers to wait in the all-reduce through the block
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    torch.manual_seed(args.seed)
    net = Net()
    model = nn.parallel.DistributedDataParallel(net)
    # A group every rank creates (new_group is collective) but only the fault rank ever
    # uses: its all-reduce there waits for peers that never come, until the timeout.
    side = (
        dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=args.magnitude))
        if args.fault == "extra_collective"
        else None
    )
    # Per-step work of this rank (the jitter job's variable sequence lengths): its own
    # stream, so ranks draw independently with equal means.
    work_rng = random.Random(7919 * args.seed + rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(args.seed + 1))
    data = torch.Generator().manual_seed(1000 * args.seed + rank)
    held_out = torch.Generator().manual_seed(999)
    fault, at = args.fault, args.fault_step
    mine = rank == args.fault_rank
    # overfitting: a tiny training set, drawn once, trained on over and over
    tiny_x = torch.randn(8, 32, generator=data)
    tiny_y = torch.randint(0, 4, (8,), generator=data)

    def batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 32, generator=gen)
        y = (x @ teacher).argmax(dim=1)
        flip = torch.rand(n, generator=gen) < args.noise
        y = torch.where(flip, torch.randint(0, 4, (n,), generator=gen), y)
        return x, y

    eval_x, eval_y = batch(held_out, 256)
    monitor = producers.init(args.run)
    # A restarted job resumes its step count where it resumes its loop.
    monitor.watch(model, optimizer, every=1, start_step=args.start_step)
    held: list[bytearray] = []  # what the leak and warm-up faults allocate and keep
    started = time.time()
    leak_t: float | None = None

    def hold(seconds: float) -> None:
        """Keep `magnitude` MB per second of `seconds` allocated (and touched)."""
        target = int(seconds * args.magnitude * 1e6)
        have = sum(len(b) for b in held)
        while have < target:
            chunk = bytearray(b"\x01") * min(8_000_000, target - have)
            held.append(chunk)
            have += len(chunk)

    try:
        for step in range(args.start_step, args.steps):
            if fault == "leak" and mine and step >= at:
                if step == at:
                    announce(fault, step, rank)
                    leak_t = time.time()
                hold(time.time() - (leak_t or time.time()))
            if fault == "warmup" and mine:  # grows for 15 s from the start, then levels off
                hold(min(15.0, time.time() - started))
            if fault == "data_hang" and mine and step == at:
                announce(fault, step, rank)
                time.sleep(args.magnitude)  # the data loader blocks; peers wait in all-reduce
            if fault == "crash" and mine and step == at:
                announce(fault, step, rank)
                os._exit(1)  # no flush, no goodbye: the peers hang in the next all-reduce
            if fault == "preempt" and step == at:
                announce(fault, step, rank)
                os._exit(1)  # every rank killed at once (a preemption): the job restarts
            if fault == "overfit" and step >= at:
                if step == at:
                    announce(fault, step, rank)
                x, y = tiny_x, tiny_y
            else:
                x, y = batch(data, args.batch)
            if fault == "slow_input" and mine and step >= at:
                if step == at:
                    announce(fault, step, rank)
                time.sleep(args.magnitude / 1000)  # a slow input pipeline: ms per step
            work = args.work_ms / 1000
            if fault == "jitter":  # equal means, each step 0.25-1.75x on every rank
                work *= work_rng.uniform(0.25, 1.75)
            if fault == "failslow" and mine and step >= at:
                if step == at:
                    announce(fault, step, rank)
                work *= 1 + args.magnitude  # a slower GPU: the same forward takes longer
            net.work_s = work
            if fault == "compute_hang" and mine and step == at:
                announce(fault, step, rank)
                net.stall_s = args.magnitude
            if fault == "slowdown" and step >= at:
                if step == at:
                    announce(fault, step, rank)
                # every rank's input pipeline slows (a shared file system)
                time.sleep(args.magnitude * args.work_ms / 1000)
            if fault == "bad_batch" and mine and step == at:
                announce(fault, step, rank)
                x = x * args.magnitude  # one corrupted batch (bad normalisation, garbage)
            if fault == "vanish" and step == at:
                announce(fault, step, rank)
                with torch.no_grad():  # fc2's input collapses, so does its weight gradient
                    model.module.fc1.weight.div_(args.magnitude)
                    model.module.fc1.bias.div_(args.magnitude)
            if fault == "explode" and step == at:
                announce(fault, step, rank)
                with torch.no_grad():
                    model.module.head.weight.mul_(args.magnitude)
            if fault == "lr_blowup" and step == at:
                announce(fault, step, rank)
                for group in optimizer.param_groups:
                    group["lr"] *= args.magnitude
            if fault == "plateau" and step == at:
                announce(fault, step, rank)
                for group in optimizer.param_groups:
                    group["lr"] = 0.0
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            if fault == "nan" and mine and step == at:
                announce(fault, step, rank)
                loss = loss * math.nan
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces the gradients here
            if fault == "corrupt_grads" and mine and at <= step < at + 3:
                if step == at:
                    announce(fault, step, rank)
                with torch.no_grad():  # a bad GPU or link: this rank's copy goes wrong
                    grad = model.module.fc1.weight.grad
                    assert grad is not None
                    grad.add_(torch.randn_like(grad) * grad.norm() * args.magnitude)
            if fault == "extra_collective" and mine and step == at:
                announce(fault, step, rank)
                try:  # the peers are already in the next step's all-reduce, waiting for it
                    dist.all_reduce(torch.ones(1), group=side)
                except RuntimeError as exc:  # gloo's timeout: give up on it, carry on
                    print(json.dumps({"extra_collective_gave_up": str(exc)[:120]}))
            optimizer.step()
            if fault == "ckpt_hang" and mine and step == at:
                with monitor.phase("checkpoint"):  # a checkpoint write that blocks
                    announce(fault, step, rank)
                    time.sleep(args.magnitude)
            if fault == "rank0_duties" and rank == 0 and step in (at, at + 60):
                # Rank 0 alone evaluates, later checkpoints, declared; its peers wait in
                # the next all-reduce.
                if step == at:
                    announce(fault, step, rank)
                phase, seconds = ("eval", 8.0) if step == at else ("checkpoint", 12.0)
                with monitor.phase(phase):
                    time.sleep(seconds * args.magnitude)
            if args.step_sleep:
                time.sleep(args.step_sleep)
            monitor.log(step, loss=loss.detach())
            if step % args.eval_every == 0:
                with torch.no_grad():
                    val = nn.functional.cross_entropy(model.module(eval_x), eval_y)
                monitor.log_eval(step, val_loss=val)
    except RuntimeError as exc:  # a peer died: gloo fails the collective at once
        print(json.dumps({"peer_failed": str(exc)[:200], "t": time.time()}))
        sys.stdout.flush()
        # NCCL would hang in the collective until its timeout: wait like it, so the rank
        # stays alive (heartbeats going) while its peer is dead.
        time.sleep(8)
    if fault == "stagger":
        time.sleep(rank * args.magnitude)  # clean exits, rank r closes r x magnitude s later
    monitor.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
