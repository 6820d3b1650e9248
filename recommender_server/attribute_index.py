"""Every item's attributes in process, to turn a selective request filter into ids.

Why: a filter only a few items pass cannot be served by over-fetching nearest
neighbours (a 5% filter needs ~20× the candidates, and still misses some); the FAISS
search can instead score exactly the ids that pass (``SearchBody.only``). Finding those
ids needs every item's attributes, which only Redis holds (``items:known`` and one
``item:{id}`` JSON each). This index loads them when a worker starts (or at the first
filter), re-reads them every ``refresh_s`` in the background (stale while it reloads),
and sooner when the catalogue's size changed (``SCARD`` every ``check_s``: a new item
shows within seconds). It keeps the ids each recent filter lets through until the next
load. It declines (``None``: over-fetch instead) when the catalogue is larger than
``max_items``, empty (an API started before the catalogue was published), or Redis
fails.

Decoding the attributes and scanning them for a new filter run on the event loop in
slices of :data:`SLICE` items, yielding between slices. Done in one go, a load of 20,000
items stalled every request of the worker for ~0.1 s: p99 +18 to +31 ms in a 10 s run.
In a thread it was worse: the event loop then waits for the GIL at every switch
interval (p99 +58 to +66 ms).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from common.stores import RedisKeys
from recommender_server.filters import AttributeFilter

log = logging.getLogger(__name__)

#: Item metadata keys read per MGET while loading.
LOAD_CHUNK = 5_000
#: Items decoded or scanned between two yields to the event loop (~1-2 ms of work).
SLICE = 1_000


class AttributeIndex:
    """``await allowed(flt)``: the ids of every item ``flt`` lets through, or ``None``."""

    def __init__(self, redis: Any, keys: RedisKeys, *, refresh_s: float, max_items: int,
                 check_s: float = 5.0, max_filters: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.r = redis
        self.keys = keys
        self.refresh_s = refresh_s
        self.check_s = check_s
        self.max_items = max_items
        self.max_filters = max_filters
        self.clock = clock
        self.attrs: dict[str, Any] | None = None  # item id -> attributes (None: not loaded)
        self.too_large = False
        self.loads = 0
        self._expires = 0.0
        self._checked = 0.0  # when the catalogue's size was last compared
        self._known = -1  # the catalogue's size at the last load
        self._loading: asyncio.Task[None] | None = None
        self._allowed: dict[tuple[object, ...], list[str]] = {}
        self._scans: dict[tuple[object, ...], asyncio.Future[list[str]]] = {}

    def stats(self) -> dict[str, object]:
        """What ``/ready`` shows: items held (``None``: not loaded), loads, filters kept."""
        return {"items": None if self.attrs is None else len(self.attrs),
                "too_large": self.too_large, "loads": self.loads,
                "filters_cached": len(self._allowed)}

    async def warm(self) -> None:
        """Load now (at start-up): otherwise the first filtered requests of a worker
        wait for the load (p99 +10 to +29 ms in the first 10 s of filtered traffic)."""
        await self._fresh()

    async def allowed(self, flt: AttributeFilter) -> list[str] | None:
        """Ids passing ``flt``, in no particular order; ``None`` when the index cannot
        answer (catalogue over ``max_items`` or empty, never loaded because Redis
        failed)."""
        await self._fresh()
        attrs = self.attrs
        if not attrs or self.too_large:
            return None
        key = flt.key
        ids = self._allowed.get(key)
        if ids is not None:
            return ids
        scan = self._scans.get(key)  # requests with the same new filter share one scan
        if scan is None:
            scan = asyncio.ensure_future(_passing(attrs, flt))
            self._scans[key] = scan
            try:
                ids = await scan
            finally:
                del self._scans[key]
            if len(self._allowed) >= self.max_filters:
                self._allowed.clear()
            if attrs is self.attrs:  # not reloaded meanwhile
                self._allowed[key] = ids
            return ids
        return await asyncio.shield(scan)

    async def _fresh(self) -> None:
        """Load at first use (awaited); later reloads run in the background, at most one
        per ``refresh_s`` (a failed load is retried after that too)."""
        now = self.clock()
        idle = self._loading is None or self._loading.done()
        if idle and self.attrs is not None and now < self._expires \
                and now >= self._checked + self.check_s:
            self._checked = now
            try:  # a new (or removed) item: reload now, not at the end of the interval
                if int(await self.r.scard(self.keys.known)) != self._known:
                    self._expires = now
            except Exception as exc:  # noqa: BLE001 - the interval reload still comes
                log.debug("catalogue size check failed: %s", exc)
        if now >= self._expires and idle:
            self._expires = now + self.refresh_s
            self._checked = now
            self._loading = asyncio.get_running_loop().create_task(self._load())
        if self.attrs is None and self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)

    async def _load(self) -> None:
        try:
            known = sorted(await self.r.smembers(self.keys.known))
            self._known = len(known)
            if len(known) > self.max_items:
                self.too_large, self.attrs = True, {}
                return
            attrs: dict[str, Any] = {}
            for start in range(0, len(known), LOAD_CHUNK):
                part = known[start:start + LOAD_CHUNK]
                raw = await self.r.mget([self.keys.item(i) for i in part])
                for at in range(0, len(part), SLICE):
                    for i, v in zip(part[at:at + SLICE], raw[at:at + SLICE], strict=True):
                        if v is not None:
                            attrs[i] = json.loads(v)
                    await asyncio.sleep(0)
            self.too_large, self.attrs = False, attrs
            self._allowed = {}
            self.loads += 1
        except Exception as exc:  # noqa: BLE001 - any failure: over-fetch until next time
            log.warning("attribute index not loaded (filters over-fetch instead): %s",
                        f"{type(exc).__name__}: {exc}"[:300])


async def _passing(attrs: dict[str, Any], flt: AttributeFilter) -> list[str]:
    """The ids of ``attrs`` that ``flt`` lets through, scanned in slices."""
    items = list(attrs.items())
    out: list[str] = []
    for at in range(0, len(items), SLICE):
        out.extend(i for i, a in items[at:at + SLICE] if flt.matches(a))
        await asyncio.sleep(0)
    return out
