"""Who is publishing: run id, rank, world size, local rank and node, from the environment.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / TORCHELASTIC_RUN_ID; SLURM sets
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_JOB_ID / SLURMD_NODENAME. An explicit
argument beats the environment, which beats the defaults (a single process).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from stepstream.keys import check_run_id


@dataclass(frozen=True)
class Identity:
    """Where a publisher sits in a distributed job."""

    run: str
    rank: int
    world: int
    local_rank: int
    node: str


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def detect_identity(
    run: str | None = None,
    rank: int | None = None,
    world: int | None = None,
    local_rank: int | None = None,
    node: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Identity:
    """Resolve the identity from arguments, then torchrun, then SLURM, then defaults."""
    env = os.environ if env is None else env
    run = (
        run
        or env.get("STEPSTREAM_RUN")
        or env.get("TORCHELASTIC_RUN_ID")
        or (f"slurm-{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else None)
        or time.strftime("run-%Y%m%d-%H%M%S")
    )
    if run == "none":  # torchrun's default rdzv id when none is given
        run = time.strftime("run-%Y%m%d-%H%M%S")
    resolved_rank = rank if rank is not None else _int(env, "RANK", "SLURM_PROCID")
    resolved_world = world if world is not None else _int(env, "WORLD_SIZE", "SLURM_NTASKS")
    resolved_local = (
        local_rank if local_rank is not None else _int(env, "LOCAL_RANK", "SLURM_LOCALID")
    )
    return Identity(
        run=check_run_id(run),
        rank=resolved_rank or 0,
        world=resolved_world or 1,
        local_rank=resolved_local or 0,
        node=node or env.get("SLURMD_NODENAME") or socket.gethostname(),
    )
