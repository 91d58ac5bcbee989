"""FSDP1 (``torch.distributed.fsdp.FullyShardedDataParallel``) models under `watch()`.

Lightning's ``FSDPStrategy`` and the Hugging Face Trainer with ``fsdp_config["version"] =
1`` wrap the model in FSDP1, not FSDP2's ``fully_shard``. FSDP1 flattens each wrapped
module's parameters into one ``FlatParameter`` and gives every rank a contiguous slice of
it; with ``use_orig_params=True`` (both frameworks' default) the original parameters stay,
as plain tensors viewing the rank's slice (empty where the slice misses a parameter), and
after backward their ``.grad`` is the rank's slice of the reduce-scattered gradient.

They are not DTensors, so `watch()` takes them for replicas, as under DDP: each rank would
publish the norm of its own slice as ``grad/global_norm``, and stage 2 would take the
median of the ranks' slice norms for the job's norm (and compare slices as replicas). This
module tells the watch what the flat parameters are: disjoint slices, each held by the
ranks outside the shard group (HYBRID_SHARD's replicas), so each rank reports its shares
of the squared norms and stage 2 adds them into the job's norms, as for FSDP2.

Only read here: FSDP1's handles (which parameters each flattens, its shard group's size)
and parameter attributes, all kept on every rank: nothing is communicated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: The attribute FSDP1 sets on every tensor it flattened (torch's ``FSDP_FLATTENED``).
_FLATTENED = "_fsdp_flattened"

#: Module names FSDP1 and activation checkpointing insert into parameter names: the
#: model's own names are what a user knows (and what FSDP's ``named_parameters`` shows).
WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def is_fsdp1(params: Iterable[Any]) -> bool:
    """True when FSDP1 flattened any of `params` (no FSDP import: an attribute check)."""
    return any(getattr(p, _FLATTENED, False) for p in params)


def clean_name(name: str) -> str:
    """A parameter's name without the wrapper modules FSDP1 and checkpointing insert."""
    for wrapper in WRAPPER_NAMES:
        name = name.replace(wrapper, "")
    return name


def shard_copies(modules: Iterable[Any], world: int) -> dict[int, float]:
    """Per parameter FSDP1 shards (by ``id``): how many ranks hold the same slice of it.

    A sharding strategy that shards (FULL_SHARD, SHARD_GRAD_OP, HYBRID_*) splits each flat
    parameter over its handle's process group: the slice is copied on ``world / group``
    ranks (1 for full sharding, the replicate group under HYBRID_SHARD). NO_SHARD
    parameters are whole on every rank, as under DDP: absent here. `modules` are where the
    FSDP instances are found (the wrapper a framework built, the module it trains)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    copies: dict[int, float] = {}
    seen: set[int] = set()
    for root in modules:
        for fsdp in FullyShardedDataParallel.fsdp_modules(root):
            handle = getattr(fsdp, "_handle", None)
            if handle is None or id(handle) in seen or not handle.uses_sharded_strategy:
                continue
            seen.add(id(handle))
            group = max(1, int(handle.world_size))
            flat = handle.flat_param
            held = max(1.0, world / group)
            copies[id(flat)] = held  # use_orig_params=False: the flat parameter itself
            for param in getattr(flat, "_params", None) or ():
                copies[id(param)] = held
    return copies


def adapt_watch(watch: Any, modules: Iterable[Any], world: int) -> bool:
    """Make `watch` (a `producers.watch.Watch`) read an FSDP1 model's slices as shards.

    Names lose FSDP's wrapper modules. When FSDP1 shards a watched parameter, the watch
    reports shares of the squared norms: per parameter 1 / the ranks holding its slice,
    and 1 / `world` for a parameter FSDP does not flatten (every rank holds it whole).
    Returns True when the watch now reports shares.

    Sets `Watch.sharded` and the per-parameter scales `Watch._scales`, which watch() would
    otherwise derive from DTensor placements: plain tensors carry none (see the report on
    issue 26 for the change that moves this into `producers.watch`)."""
    params = list(watch.params)
    if watch.sharded or not is_fsdp1(params):
        return False
    names = [clean_name(n) for n in watch.names]
    copies = shard_copies(modules, world)
    # Everything is worked out before the watch changes: a failure above leaves it whole.
    watch.names = names
    sharded = sum(id(p) in copies for p in params)
    if not sharded:
        return False  # NO_SHARD: every rank holds the whole gradient, as under DDP
    whole = float(max(1, world))
    watch._scales = [1.0 / copies.get(id(p), whole) for p in params]
    watch.sharded = True
    log.debug("stepstream: FSDP1 model: %d of %d parameters sharded", sharded, len(params))
    return True
