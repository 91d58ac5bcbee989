"""One rank of a sharded training job on CPU/gloo, instrumented only through the public SDK,
run as a subprocess with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and STEPSTREAM_* set,
as torchrun would (tests/integration/test_parallelism_live.py and bench/parallel_faults.py
start it).

argv: run parallelism steps faults report.json
  parallelism: ``fsdp`` (FSDP2 `fully_shard` per layer and on the root), ``hsdp`` (a 2 x 2
      replicate x shard mesh), ``tp`` (column/row-wise `parallelize_module` on the ``tp``
      dimension of a 2 x 2 ``dp`` x ``tp`` mesh, FSDP2 over ``dp``), ``pp`` (a 2-stage
      `torch.distributed.pipelining` GPipe schedule), ``ddp``.
  faults: comma-separated ``kind:rank:step`` or ``none``: ``nan`` (a NaN in the rank's
      local gradient shard after backward), ``slow`` (the rank's data wait grows by 30 ms
      a step from that step on), ``hang`` (the rank blocks in its data loader for good),
      ``sdkfail`` (the SDK's gradient reading raises on that rank: the job must not notice).

Every step the job also computes the job's gradient norm as `torch.nn.utils.clip_grad_norm_`
returns it (a collective), so a test can compare it with what stage 2 combined from the
ranks' shares: the report holds it by step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import producers

STEP_SLEEP_S = 0.01
SLOW_S = 0.03


def _faults(spec: str, rank: int) -> dict[str, int]:
    out: dict[str, int] = {}
    if spec == "none":
        return out
    for part in spec.split(","):
        kind, who, step = part.split(":")
        if int(who) == rank:
            out[kind] = int(step)
    return out


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def _norm(value: Any) -> float:
    full = value.full_tensor() if hasattr(value, "full_tensor") else value
    return float(full)


def main() -> None:
    run, parallelism, steps, spec, report = sys.argv[1:6]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    faults = _faults(spec, rank)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model()
    mesh = None
    schedule = None
    first_stage = True
    if parallelism == "fsdp":
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    elif parallelism == "hsdp":
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        fully_shard(model, mesh=mesh)
    elif parallelism == "tp":
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
    elif parallelism == "pp":
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        # 2 stages; each stage's data-parallel ranks (world / 2) shard it with FSDP2.
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("pp", "dp"))
        coordinate = mesh.get_coordinate()
        assert coordinate is not None
        index = coordinate[0]
        # A stage keeps the model's own layer names (as TorchTitan's splitting does): the
        # other stage's layers become identities.
        part = model
        for i in range(2, len(model)) if index == 0 else range(2):
            part[i] = nn.Identity()
        if world > 2:
            fully_shard(part, mesh=mesh["dp"])
        model = part
        stage = PipelineStage(part, index, 2, torch.device("cpu"), group=mesh["pp"].get_group())
        first_stage = index == 0
        loss_fn = nn.MSELoss()
        schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=loss_fn)
    elif parallelism == "ddp":
        model = nn.parallel.DistributedDataParallel(model)  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown parallelism {parallelism}")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # Data parallel ranks (all but pipeline and tensor-parallel peers) read their own batches.
    data = torch.Generator().manual_seed(100 + rank)
    if "sdkfail" in faults:  # a bug in the SDK's gradient reading, from the first step
        from producers.watch import Watch

        def broken(_self: Watch) -> None:
            raise RuntimeError("injected failure in watch()")

        Watch._read_grads = broken  # type: ignore[method-assign]
    monitor = producers.init(run, rank=rank, world=world, mesh=mesh)
    monitor.watch(model, optimizer, every=1)
    clip: dict[int, float] = {}
    last_layers: dict[str, float] = {}
    try:
        for step in range(int(steps)):
            wait = STEP_SLEEP_S + (SLOW_S if step >= faults.get("slow", 1 << 30) else 0.0)
            for kind, at in faults.items():
                if step == at:  # when the fault began, for the benchmark's delays
                    Path(f"{report}.{kind}").write_text(repr(time.time()))
            if step == faults.get("hang"):
                wait = 3600.0  # blocked in the data loader; its peers wait in a collective
            time.sleep(wait)
            x = torch.randn(8, 16, generator=data)
            target = torch.zeros(8, 4)
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None:
                losses: list[torch.Tensor] = []
                if first_stage:
                    schedule.step(x)
                else:
                    schedule.step(target=target, losses=losses)
                loss = torch.stack(losses).mean() if losses else None
            else:
                loss = nn.functional.mse_loss(model(x), target)
                loss.backward()
            if step == faults.get("nan"):
                with torch.no_grad():
                    grad = next(p for p in model.parameters() if p.grad is not None).grad
                    assert grad is not None
                    local = grad.to_local() if hasattr(grad, "to_local") else grad
                    local.view(-1)[0] = math.nan
            clip[step] = _clip_norm(model, schedule is not None)
            if step == int(steps) - 1:
                last_layers = _layer_norms(model)
            optimizer.step()
            # The reference norm goes to the report, not to the monitor: it comes out of a
            # collective, so a NaN in it is on every rank at once, which says nothing.
            if loss is not None:
                monitor.log(step, loss=loss.detach())
            else:  # a first pipeline stage has no loss: it logs what it has
                monitor.log(step, microbatches=2.0)
        flushed = monitor.flush(60)
    finally:
        monitor.close()
    Path(report).write_text(
        json.dumps({"rank": rank, "clip": clip, "layers": last_layers, "flushed": flushed})
    )
    dist.barrier()
    dist.destroy_process_group()


def _layer_norms(model: nn.Module) -> dict[str, float]:
    """Each parameter's whole gradient norm at this step (DTensors gathered: a collective
    the test job may afford), by parameter name: a pipeline stage has only its own."""
    out: dict[str, float] = {}
    for name, param in model.named_parameters():
        grad: Any = param.grad
        if grad is not None:
            full = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
            out[name.removeprefix("module.")] = float(full.norm())  # DDP's wrapper prefix
    return out


def _clip_norm(model: nn.Module, pipeline: bool) -> float:
    """The job's gradient norm, as clip_grad_norm_ computes it (no clipping: max_norm inf).
    A pipeline stage's norm covers its own layers: the stages' squares are added."""
    # get_total_norm is the norm clip_grad_norm_ returns, without scaling the gradients
    # by it (the clip would spread a NaN of one shard to every rank's gradients).
    grads: list[Any] = [p.grad for p in model.parameters() if p.grad is not None]
    try:
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
    except RuntimeError:
        # torch 2.13 cannot stack norms of DTensors on different meshes (tensor parallel
        # layers on dp x tp, the rest on dp): the same sum, parameter by parameter.
        return math.sqrt(math.fsum(_norm(g.full_tensor().pow(2).sum()) for g in grads))
    if not pipeline:
        return _norm(norm)
    # Every rank adds its stage's square: each stage is counted once per data-parallel rank.
    square = torch.tensor([_norm(norm) ** 2])
    dist.all_reduce(square)
    return math.sqrt(float(square) / (dist.get_world_size() // 2))


if __name__ == "__main__":
    main()
