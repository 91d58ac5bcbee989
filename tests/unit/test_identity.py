"""Who a publisher is, from arguments, torchrun or SLURM."""

from __future__ import annotations

import pytest

from producers.identity import detect_identity
from stepstream.errors import ConfigError


def test_torchrun_environment() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "job7"}
    ident = detect_identity(env=env, node="n3")
    assert (ident.run, ident.rank, ident.world, ident.local_rank, ident.node) == (
        "job7",
        5,
        8,
        1,
        "n3",
    )


def test_slurm_environment() -> None:
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_ID": "991",
        "SLURMD_NODENAME": "gpu12",
    }
    ident = detect_identity(env=env)
    assert (ident.run, ident.rank, ident.world, ident.local_rank, ident.node) == (
        "slurm-991",
        3,
        4,
        3,
        "gpu12",
    )


def test_arguments_beat_environment() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "STEPSTREAM_RUN": "from-env"}
    ident = detect_identity("explicit", rank=0, world=2, env=env)
    assert (ident.run, ident.rank, ident.world) == ("explicit", 0, 2)


def test_stepstream_run_beats_torchrun_id() -> None:
    ident = detect_identity(env={"STEPSTREAM_RUN": "mine", "TORCHELASTIC_RUN_ID": "other"})
    assert ident.run == "mine"


def test_single_process_defaults() -> None:
    ident = detect_identity(env={})
    assert (ident.rank, ident.world, ident.local_rank) == (0, 1, 0)
    assert ident.run.startswith("run-")


def test_invalid_run_id_is_refused() -> None:
    with pytest.raises(ConfigError):
        detect_identity("has space", env={})


def test_node_override_is_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from stepstream.settings import Settings

    monkeypatch.setenv("STEPSTREAM_NODE", "rack4-node7")
    assert Settings().node == "rack4-node7"
    # the override (an argument) beats SLURM's and the host name
    ident = detect_identity(node=Settings().node, env={"SLURMD_NODENAME": "gpu12"})
    assert ident.node == "rack4-node7"
    assert detect_identity(env={"SLURMD_NODENAME": "gpu12"}).node == "gpu12"
