"""Read topics back through a consumer group and count what arrives.

Used by the demo and the tests to prove a replay went through the broker. It resumes
from the group's committed offsets (earliest on the first run), so each run counts
exactly the events published since the previous run, whatever else the topic holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from common.kafka import CONSUMER_GROUP_OPTIONS
from common.settings import Settings


@dataclass
class ReadBack:
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def start_consumer(settings: Settings, topics: list[str], group: str) -> AIOKafkaConsumer:
    """A consumer that has joined ``group`` and holds its assignment (ready to count)."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.kafka_bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=5000,
        **CONSUMER_GROUP_OPTIONS,
    )
    await consumer.start()
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=200, max_records=1)  # drives the group join
        if consumer.assignment():
            break
    if not consumer.assignment():
        await consumer.stop()
        raise TimeoutError(f"consumer group {group!r} got no partitions within 30s")
    # getmany above may have fetched a record; rewind to the committed positions.
    for tp in consumer.assignment():
        committed = await consumer.committed(tp)
        if committed is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    return consumer


async def count_until(consumer: AIOKafkaConsumer, expected: dict[str, int],
                      idle_timeout_s: float = 10.0, keep_records: bool = False,
                      run_header: tuple[str, bytes] | None = None) -> ReadBack:
    """Consume until each topic has ``expected`` records (or nothing arrives for a while).

    ``expected`` may be filled in while this runs (the producer says how many it sent
    when it finishes); until then counting goes on. Offsets are committed after every
    fetched batch: at-least-once, like the worker. With ``run_header`` only records
    carrying that header (name, value) count, so older data on the topic is skipped.
    """
    result = ReadBack()
    t0 = time.perf_counter()
    last_seen = time.monotonic()
    while not expected or any(result.counts[t] < n for t, n in expected.items()):
        batches = await consumer.getmany(timeout_ms=500, max_records=5000)
        if not batches:
            if expected and time.monotonic() - last_seen > idle_timeout_s:
                break
            continue
        last_seen = time.monotonic()
        for tp, records in batches.items():
            if run_header is not None:
                records = [r for r in records if run_header in (r.headers or ())]
            result.counts[tp.topic] += len(records)
            if keep_records:
                result.records.extend(records)
        await consumer.commit()
    result.seconds = time.perf_counter() - t0
    return result


async def produce_and_count(settings: Settings, topics: list[str], group: str,
                            produce: Callable[[], Awaitable[dict[str, int]]],
                            keep_records: bool = False,
                            run_header: tuple[str, bytes] | None = None) -> ReadBack:
    """Join ``group``, run ``produce`` (returns expected counts per topic), count them back."""
    consumer = await start_consumer(settings, topics, group)
    try:
        expected: dict[str, int] = {}
        counting = asyncio.ensure_future(
            count_until(consumer, expected, keep_records=keep_records, run_header=run_header))
        expected.update(await produce())
        return await counting
    finally:
        await consumer.stop()
