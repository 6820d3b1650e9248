"""Replay a data set into Kafka as live events: items first, then interactions in time order.

The command line is ``python -m scripts.replay``; the demo, drills, benchmarks and tests
use :class:`Replayer` directly. Interactions are keyed by user id (so one user's events
stay ordered on one partition), items by item id. Topics are created explicitly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from common.events import interaction_json, item_json
from common.kafka import ensure_topics
from common.settings import Settings
from datasets.types import Interactions, Item

log = logging.getLogger("replay")

RUN_HEADER = "replay-run"


@dataclass
class ReplayStats:
    interactions: int
    items: int
    seconds: float

    @property
    def events(self) -> int:
        return self.interactions + self.items

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> str:
        return json.dumps({"events": self.events, "interactions": self.interactions,
                           "items": self.items, "seconds": round(self.seconds, 3),
                           "events_per_s": round(self.events_per_s, 1)})


def interaction_chunks(inter: Interactions, chunk: int = 10_000) -> Iterator[Interactions]:
    for start in range(0, len(inter), chunk):
        yield inter.take(slice(start, start + chunk))


class Replayer:
    """Publishes items and interactions; one producer, bounded in-flight sends."""

    def __init__(self, settings: Settings, rate: float | None = None,
                 progress: bool = True, run_id: str | None = None) -> None:
        self.settings = settings
        self.rate = rate
        self.progress = progress
        # Every record carries a `replay-run` header so a reader can count exactly this run.
        self.run_id = run_id or uuid.uuid4().hex
        self._headers = [(RUN_HEADER, self.run_id.encode())]

    async def run(self, items: list[Item], chunks: Iterator[Interactions],
                  total_interactions: int, ts_ms: int | None = None) -> ReplayStats:
        s = self.settings
        await ensure_topics(s, [s.topic_interactions, s.topic_items, s.topic_dead_letter])
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all",
                                    linger_ms=5, max_batch_size=512 * 1024,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        sent = 0
        bar = tqdm(total=len(items) + total_interactions, unit="ev", disable=not self.progress,
                   desc="replay", mininterval=0.5)
        t0 = time.perf_counter()
        pending: list[asyncio.Future[object]] = []
        try:
            item_ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
            for item in items:
                pending.append(await producer.send(
                    s.topic_items, item_json(item.item_id, "upsert", item.attributes, item_ts),
                    key=item.item_id.encode(), headers=self._headers))
                sent += 1
                await self._pace(sent, t0)
            bar.update(len(items))
            n_inter = 0
            for ch in chunks:
                events = ch.event_types()
                has_value = ch.events is None  # ratings carry their value
                for u, i, e, r, t in zip(ch.users.tolist(), ch.items.tolist(), events.tolist(),
                                         ch.ratings.tolist(), ch.ts_ms.tolist(), strict=True):
                    pending.append(await producer.send(
                        s.topic_interactions,
                        interaction_json(u, i, e, t, r if has_value else None),
                        key=u.encode(), headers=self._headers))
                    sent += 1
                    await self._pace(sent, t0)
                n_inter += len(ch)
                bar.update(len(ch))
                if len(pending) > 50_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            await producer.flush()
        finally:
            bar.close()
            await producer.stop()
        return ReplayStats(n_inter, len(items), time.perf_counter() - t0)

    async def _pace(self, sent: int, t0: float) -> None:
        if self.rate:
            ahead = sent / self.rate - (time.perf_counter() - t0)
            if ahead > 0.005:
                await asyncio.sleep(ahead)
