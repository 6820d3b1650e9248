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

from confluent_kafka import KafkaError, Producer
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
    """Publishes items and interactions; one producer (librdkafka, through
    confluent-kafka), bounded by its local queue.

    Why not aiokafka here: a load generator shares this machine's 2 cores with the
    worker it measures. aiokafka's ``send`` costs ~45 µs of Python per record (22,000
    records/s flat out), so at a paced 10,000 events/s it took ~half a core from the
    worker; librdkafka's ``produce`` costs ~2 µs (measured 2026-11-30: 100,000 records,
    2.2 µs of CPU each). Delivery is the same: ``acks=all``, and the run fails if any
    record was not delivered.
    """

    def __init__(self, settings: Settings, rate: float | None = None,
                 progress: bool = True, run_id: str | None = None) -> None:
        self.settings = settings
        self.rate = rate
        self.progress = progress
        # Every record carries a `replay-run` header so a reader can count exactly this run.
        self.run_id = run_id or uuid.uuid4().hex
        self._headers: list[tuple[str, str | bytes | None]] = [(RUN_HEADER, self.run_id.encode())]

    async def run(self, items: list[Item], chunks: Iterator[Interactions],
                  total_interactions: int, ts_ms: int | None = None) -> ReplayStats:
        s = self.settings
        await ensure_topics(s, [s.topic_interactions, s.topic_items, s.topic_dead_letter])
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "acks": "all",
                             "linger.ms": 5, "batch.size": 512 * 1024,
                             "message.max.bytes": 4 * 1024 * 1024})
        failed: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failed.append(err)

        def send(topic: str, value: bytes, key: bytes) -> None:
            while True:
                try:
                    producer.produce(topic, value, key=key, headers=self._headers,
                                     on_delivery=delivered)
                    return
                except BufferError:  # local queue full: let deliveries drain it
                    producer.poll(0.005)

        sent = 0
        bar = tqdm(total=len(items) + total_interactions, unit="ev", disable=not self.progress,
                   desc="replay", mininterval=0.5)
        t0 = time.perf_counter()
        try:
            item_ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
            for item in items:
                send(s.topic_items, item_json(item.item_id, "upsert", item.attributes, item_ts),
                     item.item_id.encode())
                sent += 1
                await self._pace(sent, t0, producer)
            bar.update(len(items))
            n_inter = 0
            for ch in chunks:
                events = ch.event_types()
                has_value = ch.events is None  # ratings carry their value
                for u, i, e, r, t in zip(ch.users.tolist(), ch.items.tolist(), events.tolist(),
                                         ch.ratings.tolist(), ch.ts_ms.tolist(), strict=True):
                    send(s.topic_interactions,
                         interaction_json(u, i, e, t, r if has_value else None), u.encode())
                    sent += 1
                    await self._pace(sent, t0, producer)
                n_inter += len(ch)
                bar.update(len(ch))
            left = await asyncio.to_thread(producer.flush, 60.0)
            if left:
                raise RuntimeError(f"{left} records not delivered within 60 s")
            if failed:
                raise RuntimeError(f"{len(failed)} records not delivered: {failed[0]}")
        finally:
            bar.close()
        return ReplayStats(n_inter, len(items), time.perf_counter() - t0)

    async def _pace(self, sent: int, t0: float, producer: Producer) -> None:
        """Hold the ``rate`` (if any); serve delivery callbacks every 1,000 records."""
        if sent % 1000 == 0:
            producer.poll(0)
        if self.rate:
            ahead = sent / self.rate - (time.perf_counter() - t0)
            if ahead > 0.005:
                await asyncio.sleep(ahead)
