"""A stream worker's process-level helpers that need no faust: where its files live, its
garbage collector and its memory.

Everything that touches faust or aiokafka is in `stepstream.faust_seam`; this module
imports neither, so the local stack and the benches can find a worker's ready file
without loading faust.
"""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path
from typing import Any

from stepstream.settings import Settings


def worker_data_dir(settings: Settings, app_id: str) -> Path:
    """faust's data folder of a worker: under the state dir, never the current directory."""
    return (settings.state_dir / "workers" / app_id).absolute()


def ready_file(settings: Settings, app_id: str) -> Path:
    """The file a worker writes once it has joined its group and holds partitions."""
    return settings.state_dir / "ready" / app_id


#: Allocations between young-generation collections in a worker (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running stream worker.

    A worker allocates short-lived objects for every message (decoded models, dicts,
    floats) while holding a large, long-lived state. With Python's defaults a young
    collection ran every 700 allocations, and the collections took a quarter of stage 1's
    CPU (in-process replay of the processor bench: 243k values per CPU second with the
    defaults, 307k with this threshold, 364k with no collector at all). Everything
    loaded by start-up (modules, classes, faust's app) is moved out of the collector's
    sight with `gc.freeze`, so the rare full collections do not walk it again. Cycles are
    still collected, only in larger batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def release_memory() -> bool:
    """Hand memory the process freed back to the operating system (glibc ``malloc_trim``):
    True if some was. A no-op where the C library has no such call (musl, macOS).

    A worker that forgot idle runs has freed their windows and detector state, but the
    allocator keeps the pages for reuse. In `bench/soak.py` (2,000 runs of 4 ranks) the
    processor's RSS stayed at the high-water mark of the busiest minute with nothing held
    (155 -> 157 MiB); trimmed after each forget it went back from 154 to 147 MiB. The
    rest is Python's own arenas, which free only when wholly empty. Trimming costs a walk
    over the heap's free lists, not over live objects.
    """
    global _malloc_trim
    # Cycles among the freed state wait for a full collection, which `tune_gc` makes
    # rare: collect them first, or their blocks keep Python's arenas from emptying.
    gc.collect()
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    return bool(_malloc_trim(0))


#: glibc's malloc_trim once looked up; False where there is none.
_malloc_trim: Any = None
