"""Garbage-collector settings for the long-running processes (worker, API).

Why: both processes allocate many small objects per event or request (tuples, lists,
dicts of decoded JSON) while holding large, long-lived heaps (the worker's per-user
states, the API's user cache). CPython's default generation-0 threshold (700 new
objects) then runs a collection every few hundred events, and every tenth of those
walks generation 1, whose size grows with the live heap: with 5,000 users clicking at
once the worker spent ~15% of its time there (`bench_stream --users 5000`: 7,400–7,900
events/s with the defaults, 9,000–9,200 with a generation-0 threshold of 50,000). Raising
the threshold makes collections rarer (each one a little longer), and freezing the heap
built at start-up (models, id maps, caches) keeps it out of every later collection.
"""

from __future__ import annotations

import gc


def tune_gc(gen0_threshold: int) -> None:
    """Collect generation 0 every ``gen0_threshold`` allocations (``0``: leave the
    interpreter's defaults)."""
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def freeze_startup_heap() -> None:
    """Move every object alive now to the permanent generation: built once at start-up,
    it is never garbage, and collections then skip it."""
    gc.collect()
    gc.freeze()
