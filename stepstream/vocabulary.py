"""The metric vocabulary: the names the SDK emits, detectors and cross-rank analysis read,
rules use and the docs show, defined once.

Every signal has one canonical name (what `producers.watch` emits, or what the README tells
people to log) and the common names people log by hand as aliases (``grad_norm``,
``data_time``, ``val_loss``, ...). Stored series keep the name that was logged; detectors
and cross-rank analysis resolve names with `canonical` so an alias reaches the same
detector as the canonical name.

Each signal is classed by what data parallelism does to it (`Sync`):

- ``RANK_LOCAL``: computed on the rank before any collective (loss, data wait, forward
  time). It differs across ranks, and where it goes wrong first is where a fault started.
- ``SYNCHRONISED``: read after a collective (gradients after the all-reduce, weights,
  learning rates). Under data parallelism it must agree across ranks: a disagreement is a
  fault in itself, and a NaN in it appears on every rank in the same step.
- ``COLLECTIVE_BOUND``: a time that includes waiting in collectives (step time, compute
  time after the forward): every rank's grows with the slowest rank, so it locates nothing.
- ``HOST``: a property of the machine the rank runs on (memory, disk, GPU memory).
- ``SHARDED``: this rank's share of a sum over the ranks that shard the model (FSDP2,
  tensor or pipeline parallelism): a squared norm of its local shard, weighted by how many
  ranks hold the same shard. No rank's value means anything alone; stage 2 adds the shares
  of a step into the job's true norm. A non-finite share is located on its rank.

GPU metrics carry their device index (``gpu0/mem_used_pct``); they resolve to the signal
``gpu/<what>`` and keep their own name.

Pure data and functions: no stage imports this module's callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache


class Sync(StrEnum):
    """What data parallelism does to a signal (see the module docstring)."""

    RANK_LOCAL = "rank_local"
    SYNCHRONISED = "synchronised"
    COLLECTIVE_BOUND = "collective_bound"
    HOST = "host"
    SHARDED = "sharded"


@dataclass(frozen=True)
class Signal:
    """One named signal of the vocabulary.

    name: the canonical name; for a `prefix` signal, the prefix of a family
        (``grad/norm/`` + layer name).
    kind: the record kind it travels in (train, eval, grad, ...).
    sync: its class under data parallelism.
    source: ``sdk`` when `Monitor.watch()` emits it, ``user`` when the training code logs it.
    aliases: other names (or prefixes, for a family) that mean the same signal.
    """

    name: str
    kind: str
    sync: Sync
    source: str
    description: str
    aliases: tuple[str, ...] = ()
    prefix: bool = False


LOSS = Signal(
    "loss",
    "train",
    Sync.RANK_LOCAL,
    "user",
    "training loss of this rank's batch",
    ("train_loss", "train/loss", "loss/train"),
)
EVAL_LOSS = Signal(
    "eval_loss",
    "eval",
    Sync.RANK_LOCAL,
    "user",
    "evaluation (validation) loss, logged with log_eval()",
    ("val_loss", "validation_loss", "eval/loss", "val/loss", "loss/val", "loss/eval", "valid_loss"),
)
GRAD_NORM = Signal(
    "grad/global_norm",
    "grad",
    Sync.SYNCHRONISED,
    "sdk",
    "global L2 norm of the gradients after backward (after the all-reduce under DDP)",
    ("grad_norm", "gradient_norm", "grad/norm", "global_grad_norm"),
)
GRAD_LAYER_NORM = Signal(
    "grad/norm/",
    "grad",
    Sync.SYNCHRONISED,
    "sdk",
    "L2 norm of one parameter's gradient after backward (after the all-reduce under DDP)",
    ("grad_norm/",),
    prefix=True,
)
GRAD_NORM_SQ = Signal(
    "grad/global_norm_sq",
    "grad",
    Sync.SHARDED,
    "sdk",
    "this rank's share of the squared global gradient norm when the model is sharded "
    "(FSDP2, tensor, pipeline parallel): stage 2 adds the shares into grad/global_norm",
)
GRAD_LAYER_NORM_SQ = Signal(
    "grad/norm_sq/",
    "grad",
    Sync.SHARDED,
    "sdk",
    "this rank's share of one parameter's squared gradient norm when the model is sharded: "
    "stage 2 adds the shares into grad/norm/<param>",
    prefix=True,
)
SHARD_NORM = Signal(
    "grad/shard_norm",
    "grad",
    Sync.SYNCHRONISED,
    "sdk",
    "L2 norm of the gradient shard this rank holds (sharded models): equal on the ranks "
    "that hold the same shard (HSDP replicas), so a disagreement there is a fault",
)
NONFINITE_GRADS = Signal(
    "grad/nonfinite_count",
    "grad",
    Sync.SYNCHRONISED,
    "sdk",
    "parameters with a non-finite gradient; the record text names the first",
)
WEIGHT_NORM = Signal(
    "weight/norm/", "grad", Sync.SYNCHRONISED, "sdk", "L2 norm of one parameter", prefix=True
)
UPDATE_RATIO = Signal(
    "update_ratio/",
    "grad",
    Sync.SYNCHRONISED,
    "sdk",
    "norm of one parameter's update over its norm",
    prefix=True,
)
LR = Signal(
    "opt/lr/",
    "train",
    Sync.SYNCHRONISED,
    "sdk",
    "learning rate of one optimizer parameter group",
    # lr-<Optimizer>[/pg<i>]: Lightning's LearningRateMonitor.
    ("lr/", "lr-"),
    prefix=True,
)
MOMENTUM = Signal(
    "opt/momentum/",
    "train",
    Sync.SYNCHRONISED,
    "sdk",
    "momentum (or Adam beta1) of one parameter group",
    prefix=True,
)
DATA_WAIT = Signal(
    "perf/data_wait_s",
    "train",
    Sync.RANK_LOCAL,
    "sdk",
    "seconds from the end of the previous optimizer step to this step's forward: input wait",
    ("data_time", "data_wait", "data_time_s", "data_wait_s", "perf/data_time_s"),
)
FORWARD = Signal(
    "perf/forward_s",
    "train",
    Sync.RANK_LOCAL,
    "sdk",
    "seconds in the model's own forward (inside the DDP wrapper, so before any collective)",
    ("forward_time", "fwd_time", "forward_s", "forward_time_s"),
)
COMPUTE = Signal(
    "perf/compute_s",
    "train",
    Sync.COLLECTIVE_BOUND,
    "sdk",
    "seconds from forward to the end of the optimizer step (includes the all-reduce wait)",
    ("compute_time", "compute_s", "compute_time_s"),
)
STEP_TIME = Signal(
    "perf/step_time_s",
    "train",
    Sync.COLLECTIVE_BOUND,
    "sdk",
    "wall seconds of the whole step (equalised across ranks by the collectives)",
    ("step_time", "iter_time", "step_time_s", "iteration_time"),
)
EVAL_TIME = Signal(
    "perf/eval_s",
    "train",
    Sync.RANK_LOCAL,
    "sdk",
    'seconds this step spent in a declared eval phase (`with monitor.phase("eval")`): '
    "included in its step time and, between steps, in its data wait",
)
CHECKPOINT_TIME = Signal(
    "perf/checkpoint_s",
    "train",
    Sync.RANK_LOCAL,
    "sdk",
    "seconds this step spent in a declared checkpoint phase "
    '(`with monitor.phase("checkpoint")`): included in its step time and data wait',
)
SAMPLES_PER_S = Signal(
    "perf/samples_per_s",
    "train",
    Sync.COLLECTIVE_BOUND,
    "sdk",
    "samples per second of this rank",
    ("samples_per_s", "throughput"),
)
TOKENS_PER_S = Signal(
    "perf/tokens_per_s",
    "train",
    Sync.COLLECTIVE_BOUND,
    "sdk",
    "tokens per second of this rank",
    ("tokens_per_s",),
)

HOST_MEM_PCT = Signal("sys/host_mem_pct", "system", Sync.HOST, "sdk", "host memory in use, percent")
DISK_PCT = Signal(
    "sys/disk_used_pct",
    "system",
    Sync.HOST,
    "sdk",
    "disk (of the spool) in use, percent",
    ("sys/disk_pct",),
)
SWAP_PCT = Signal(
    "sys/swap_pct",
    "system",
    Sync.HOST,
    "sdk",
    "swap in use, percent (only where swap is configured)",
)
GPU_MEM_PCT = Signal(
    "gpu/mem_used_pct",
    "system",
    Sync.HOST,
    "sdk",
    "memory in use of GPU <i>, percent: sent as gpu<i>/mem_used_pct",
    ("sys/gpu_mem_pct",),
)

# Memory signals the leak detector (`processors.detectors.leaks`) reads as trends.
PROC_RSS = Signal(
    "sys/proc_rss_bytes", "system", Sync.HOST, "sdk", "resident memory of the rank's process"
)
HOST_MEM_USED = Signal(
    "sys/host_mem_used_bytes", "system", Sync.HOST, "sdk", "memory in use on the host, bytes"
)
HOST_MEM_TOTAL = Signal(
    "sys/host_mem_total_bytes", "system", Sync.HOST, "sdk", "memory of the host, bytes"
)
CUDA_ALLOCATED = Signal(
    "cuda/mem_allocated_bytes", "system", Sync.HOST, "sdk", "CUDA memory held by tensors"
)
CUDA_RESERVED = Signal(
    "cuda/mem_reserved_bytes", "system", Sync.HOST, "sdk", "CUDA memory held by the allocator"
)
GPU_MEM_USED = Signal(
    "gpu/mem_used_bytes",
    "system",
    Sync.HOST,
    "sdk",
    "memory in use of GPU <i>, bytes: sent as gpu<i>/mem_used_bytes",
)
GPU_MEM_TOTAL = Signal(
    "gpu/mem_total_bytes", "system", Sync.HOST, "sdk", "memory of GPU <i>: gpu<i>/mem_total_bytes"
)

CHECKPOINT = Signal(
    "event/checkpoint",
    "train",
    Sync.RANK_LOCAL,
    "sdk",
    "1 at the step a checkpoint was saved (the framework callbacks send it)",
)

LOG_LEVEL = Signal(
    "log/level",
    "log",
    Sync.RANK_LOCAL,
    "sdk",
    "the Python logging level of a captured log record (40 = ERROR); the message is its text",
    aliases=("level",),
)


SIGNALS: tuple[Signal, ...] = (
    LOSS,
    EVAL_LOSS,
    GRAD_NORM,
    GRAD_LAYER_NORM,
    GRAD_NORM_SQ,
    GRAD_LAYER_NORM_SQ,
    SHARD_NORM,
    NONFINITE_GRADS,
    WEIGHT_NORM,
    UPDATE_RATIO,
    LR,
    MOMENTUM,
    DATA_WAIT,
    FORWARD,
    COMPUTE,
    STEP_TIME,
    EVAL_TIME,
    CHECKPOINT_TIME,
    SAMPLES_PER_S,
    TOKENS_PER_S,
    HOST_MEM_PCT,
    DISK_PCT,
    SWAP_PCT,
    GPU_MEM_PCT,
    PROC_RSS,
    HOST_MEM_USED,
    HOST_MEM_TOTAL,
    CUDA_ALLOCATED,
    CUDA_RESERVED,
    GPU_MEM_USED,
    GPU_MEM_TOTAL,
    CHECKPOINT,
    LOG_LEVEL,
)

#: Exact names for one member of a family: the learning rate a loop or a framework logs as
#: one number (Hugging Face's ``learning_rate``) is the first parameter group's.
MEMBER_ALIASES: dict[str, str] = {"lr": LR.name + "0", "learning_rate": LR.name + "0"}

_EXACT: dict[str, Signal] = {}
_PREFIXES: list[tuple[str, Signal]] = []
for _signal in SIGNALS:
    for _name in (_signal.name, *_signal.aliases):
        if _signal.prefix:
            _PREFIXES.append((_name, _signal))
        else:
            _EXACT[_name] = _signal
# Longest prefix first, so a more specific family wins.
_PREFIXES.sort(key=lambda pair: -len(pair[0]))


_GPU = re.compile(r"gpu\d+/(.+)")


@lru_cache(maxsize=65536)
def resolve(metric: str) -> tuple[Signal | None, str]:
    """The signal `metric` belongs to and its canonical name (a family member keeps its
    suffix: ``grad_norm/fc.weight`` -> ``grad/norm/fc.weight``; a GPU metric its index);
    (None, metric) for a name outside the vocabulary."""
    signal = _EXACT.get(metric)
    if signal is not None:
        return signal, signal.name
    member = MEMBER_ALIASES.get(metric)
    if member is not None:
        return resolve(member)
    gpu = _GPU.fullmatch(metric)
    if gpu is not None:
        return _EXACT.get("gpu/" + gpu.group(1)), metric
    for prefix, family in _PREFIXES:
        if metric.startswith(prefix):  # the family itself (``grad/norm/``) or a member
            return family, family.name + metric[len(prefix) :]
    return None, metric


def canonical(metric: str) -> str:
    """The canonical name of `metric` (itself when it is canonical or unknown)."""
    return resolve(metric)[1]


def signal_of(metric: str) -> Signal | None:
    """The signal (or family) `metric` names, alias or canonical; None if unknown."""
    return resolve(metric)[0]


def sync_of(metric: str) -> Sync:
    """The data-parallel class of `metric`. Names outside the vocabulary are the training
    code's own values, computed on the rank: rank-local."""
    signal = signal_of(metric)
    return signal.sync if signal is not None else Sync.RANK_LOCAL


def is_rank_local(metric: str) -> bool:
    """True when a fault in `metric` can be located on the rank that reports it: a
    rank-local value, or a rank's share of a sharded sum (its own shard)."""
    return sync_of(metric) in (Sync.RANK_LOCAL, Sync.SHARDED)


def is_sharded(metric: str) -> bool:
    """True for a rank's share of a sum over the shard group (`Sync.SHARDED`)."""
    return sync_of(metric) is Sync.SHARDED


#: The combined (job-level) norm each sharded share adds up to: the share's name with
#: ``norm_sq`` for ``norm`` (``grad/norm_sq/fc.weight`` -> ``grad/norm/fc.weight``).
def combined_name(metric: str) -> str | None:
    """The job-level norm a sharded share `metric` adds into, else None."""
    signal, name = resolve(metric)
    if signal is GRAD_NORM_SQ:
        return GRAD_NORM.name
    if signal is GRAD_LAYER_NORM_SQ:
        return GRAD_LAYER_NORM.name + name[len(GRAD_LAYER_NORM_SQ.name) :]
    return None


def is_signal(metric: str, *signals: Signal) -> bool:
    """True when `metric` (alias or canonical) names one of `signals` or a member of one of
    those families."""
    found = signal_of(metric)
    return found is not None and any(found is s for s in signals)


def layer_of(metric: str) -> str | None:
    """The layer (parameter) name of a per-layer family member, else None."""
    signal, name = resolve(metric)
    if signal is None or not signal.prefix:
        return None
    return name[len(signal.name) :]


#: Signals forwarded per step to the cross-rank stage by default.
CROSSRANK_DEFAULT: tuple[Signal, ...] = (
    LOSS,
    GRAD_NORM,
    DATA_WAIT,
    FORWARD,
    COMPUTE,
    STEP_TIME,
    EVAL_TIME,
    CHECKPOINT_TIME,
    SAMPLES_PER_S,
)


# Heartbeat records (kind heartbeat): liveness, lifecycle and phase of one rank. They are
# not series: stage 1 reads them into the rank summary, stage 2 judges liveness on them.
HEARTBEAT_STEP = "heartbeat/step"
HEARTBEAT_PID = "heartbeat/pid"
HEARTBEAT_STATUS = "heartbeat/status"
"""The rank's lifecycle status as a number (`STATUS_CODES`); the name is the record text."""
HEARTBEAT_PHASE = "heartbeat/phase"
"""What the training thread is doing (`PHASE_CODES`), known from `watch()`'s hooks and
`Monitor.phase()`; absent while nothing told the SDK."""
HEARTBEAT_PHASE_S = "heartbeat/phase_s"
"""Seconds the training thread has been in its current phase."""
HEARTBEAT_STACK = "heartbeat/stack_bytes"
"""Present (the size) on a heartbeat whose text is the training thread's captured stack."""
MESH_PREFIX = "mesh/"
"""Heartbeat values ``mesh/<role>``: the rank's coordinate per parallelism role (a device
mesh the SDK found or was given). Ranks with equal ``pp`` and ``tp`` play the same part of
the model; ranks equal on every role but ``dp`` hold the same shard (replicas)."""
MESH_DP = "dp"
MESH_FSDP = "fsdp"
MESH_TP = "tp"
MESH_PP = "pp"
MESH_ROLES: tuple[str, ...] = (MESH_DP, MESH_FSDP, MESH_TP, MESH_PP)
SDK_ERRORS = "stepstream/sdk_errors"
"""SDK parts that failed on the training thread and turned themselves off (the publisher
counters record): the training went on."""


STATUS_CODES: dict[str, float] = {"starting": 0.0, "running": 1.0, "closing": 2.0, "crashed": 3.0}
STATUS_NAMES: dict[float, str] = {code: name for name, code in STATUS_CODES.items()}
CLOSING = "closing"
CRASHED = "crashed"

# Liveness findings of stage 2 (detector and built-in alert rule names), and the label
# naming the node of a rank or of a lost node.
DEAD_RANK = "dead_rank"
HUNG_RANK = "hung_rank"
RANK_EXITED = "rank_exited"
NODE_LOST = "node_lost"
NODE_LABEL = "node"

#: Phases of a training rank. ``backward`` is backward plus the gradient all-reduce: under
#: data parallelism the rank waits there for its peers (the collective phase).
PHASE_OUTSIDE = "outside"
PHASE_DATA = "data"
PHASE_FORWARD = "forward"
PHASE_BACKWARD = "backward"
PHASE_OPTIMIZER = "optimizer"
PHASE_EVAL = "eval"
PHASE_CHECKPOINT = "checkpoint"
PHASES: tuple[str, ...] = (
    PHASE_OUTSIDE,
    PHASE_DATA,
    PHASE_FORWARD,
    PHASE_BACKWARD,
    PHASE_OPTIMIZER,
    PHASE_EVAL,
    PHASE_CHECKPOINT,
)
PHASE_CODES: dict[str, float] = {name: float(i) for i, name in enumerate(PHASES)}
PHASE_NAMES: dict[float, str] = {code: name for name, code in PHASE_CODES.items()}
COLLECTIVE_PHASES = frozenset({PHASE_BACKWARD})
"""Phases in which a data-parallel rank waits for its peers."""
DECLARED_PHASES = frozenset({PHASE_EVAL, PHASE_CHECKPOINT})
"""Phases user code declares with `Monitor.phase()`: long by nature."""
#: The per-step time signal of each declared phase.
DECLARED_TIME: dict[str, Signal] = {PHASE_EVAL: EVAL_TIME, PHASE_CHECKPOINT: CHECKPOINT_TIME}

#: Causes of a run's badput (`stepstream.contract.Goodput.badput_s`, `processors.goodput`):
#: input wait every rank paid, declared eval and checkpoint, hangs and stalls (steps held
#: far beyond their usual time, gaps with no step finished), restart gaps (a rank came
#: back as a new incarnation) and the time the peers waited for the slowest rank.
BADPUT_CAUSES: tuple[str, ...] = (
    "data_wait",
    PHASE_EVAL,
    PHASE_CHECKPOINT,
    "hang_stall",
    "restart",
    "slowest_rank",
)

#: States of a run as the reader reports them (`run_state`).
RUN_STARTING = "starting"
RUN_RUNNING = "running"
RUN_FINISHED = "finished"
RUN_CRASHED = CRASHED


def run_state(statuses: dict[int, str | None], world: int | None) -> str:
    """The state of a run from its ranks' newest heartbeat statuses: ``finished`` once
    every rank of its world closed, ``crashed`` when a rank crashed, ``starting`` while no
    rank has stepped, else ``running``."""
    known = [s for s in statuses.values() if s is not None]
    closed = sum(1 for s in known if s == CLOSING)
    if known and closed >= max(world or 0, len(statuses)):
        return RUN_FINISHED
    if CRASHED in known:
        return RUN_CRASHED
    if not known or all(s == "starting" for s in known):
        return RUN_STARTING
    return RUN_RUNNING


# Sections of a run page, in the order people look at them (TensorBoard and W&B habits):
# the training code's own metrics first, then how fast it runs, its gradients and
# optimizer, the host, the GPU. Internal series (heartbeats, the SDK's own counters, log
# levels, checkpoint marks) are never charted by default: the rank grid and the
# diagnostics panel show them.
SECTION_USER = "user"
SECTION_PERF = "performance"
SECTION_GRAD = "gradients"
SECTION_SYSTEM = "system"
SECTION_GPU = "gpu"
SECTION_INTERNAL = "internal"
SECTIONS: tuple[str, ...] = (
    SECTION_USER,
    SECTION_PERF,
    SECTION_GRAD,
    SECTION_SYSTEM,
    SECTION_GPU,
    SECTION_INTERNAL,
)
SECTION_TITLES: dict[str, str] = {
    SECTION_USER: "Metrics",
    SECTION_PERF: "Performance",
    SECTION_GRAD: "Gradients & optimizer",
    SECTION_SYSTEM: "System",
    SECTION_GPU: "GPU",
    SECTION_INTERNAL: "Diagnostics (internal series)",
}
INTERNAL_PREFIXES: tuple[str, ...] = ("heartbeat/", "stepstream/", MESH_PREFIX)
"""Names the SDK sends about itself: liveness, lifecycle, publisher counters, mesh."""
_PERF_PREFIXES = ("perf/", "goodput")
_GPU_PREFIXES = ("gpu/", "cuda/", "sys/gpu")
_PER_LAYER = (GRAD_LAYER_NORM, GRAD_LAYER_NORM_SQ, WEIGHT_NORM, UPDATE_RATIO)
_SDK_EVENTS = (LOG_LEVEL, CHECKPOINT)
_USER_FIRST = (LOSS, EVAL_LOSS)
_GRAD_FIRST = (GRAD_NORM, GRAD_NORM_SQ, SHARD_NORM, NONFINITE_GRADS)


def is_internal(metric: str) -> bool:
    """True for a series the SDK sends about itself (heartbeats, publisher counters, mesh
    coordinates, captured log levels, checkpoint marks): diagnostics, not training data."""
    return metric.startswith(INTERNAL_PREFIXES) or is_signal(metric, *_SDK_EVENTS)


def section_of(metric: str) -> str:
    """The run-page section of `metric` (one of `SECTIONS`). Names outside the vocabulary
    are the training code's own metrics (accuracy, bleu, ...): the first section."""
    if is_internal(metric):
        return SECTION_INTERNAL
    signal, name = resolve(metric)
    if _GPU.fullmatch(metric) is not None or name.startswith(_GPU_PREFIXES):
        return SECTION_GPU
    if signal is None:
        if metric.startswith(_PERF_PREFIXES):
            return SECTION_PERF
        if metric.startswith("sys/"):
            return SECTION_SYSTEM
        return SECTION_USER
    if signal.kind == "system":
        return SECTION_SYSTEM
    if signal.kind == "grad" or signal.name.startswith("opt/"):
        return SECTION_GRAD
    if name.startswith(_PERF_PREFIXES):
        return SECTION_PERF
    return SECTION_USER


def is_per_layer(metric: str) -> bool:
    """True for one parameter's member of a per-layer family (``grad/norm/fc.weight``):
    charted as small multiples, collapsed by default."""
    return is_signal(metric, *_PER_LAYER)


def chart_order(metric: str) -> tuple[int, int, str]:
    """Sort key of `metric` within its section: loss and eval loss lead the user's
    metrics, the global gradient norm leads the gradients, per-layer families come last;
    then by name."""
    signal = signal_of(metric)
    lead = (*_USER_FIRST, *_GRAD_FIRST)
    first = next((i for i, s in enumerate(lead) if s is signal), len(lead))
    return (1 if is_per_layer(metric) else 0, first, metric)
