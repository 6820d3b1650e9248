"""Batch consumption of the worker's input topics, inside the Faust worker.

Faust streams hand events over one at a time (an ``Event`` object, processor chain and
acknowledgement each); on this 2-core machine a Faust agent that did nothing with its
events topped out at ~3,600 events/s, while an aiokafka ``getmany`` loop read the same
topic at ~280,000 events/s. Learning needs batches anyway, so the worker reads
`interactions` with this consumer (its own consumer group, ``<app id>-interactions``) and
keeps Faust for the rest: timers, lifecycle and the worker CLI. The `items` topic is
read the same way (consumer group ``<app id>-items``), so both topics share one decode
path (:func:`streams.messages.from_record`), one commit rule and one dead-letter path.

Semantics are the same as the agents': a batch's offsets are committed only after its
effects are durable (at-least-once; watermarks make replays harmless), at most every
``commit_interval_s``. ``handle`` returns once a batch is applied, with a future that is
done when its effects are durable too (the user documents are written to MongoDB
behind the pipeline, :mod:`streams.durable_users`), or ``None`` if they already are; the
consumer reads on, and commits each batch's offsets, in order, once its future is done.
Before partitions are revoked (rebalance) and at shutdown it waits for every pending
write and commits, so the next owner of a partition starts from durable state.
``getmany`` returns as soon as records are there, so at low load a click is processed
alone and at once; under load batches grow to ``max_batch``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import TopicPartition

from common.errors import ServiceUnavailable
from common.settings import Settings
from streams.messages import RawMessage, from_record

log = logging.getLogger(__name__)


#: What ``handle`` returns: a future done once the batch's effects are durable, or None.
Durable = asyncio.Future[None] | None


class _LogRebalance(ConsumerRebalanceListener):
    def __init__(self, topic: str, before_revoke: Callable[[], Awaitable[None]]) -> None:
        self.topic = topic
        self.before_revoke = before_revoke

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.before_revoke()  # pending writes land and are committed first
        log.info("%s partitions revoked: %s", self.topic,
                 sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("%s partitions assigned: %s", self.topic,
                 sorted(tp.partition for tp in assigned))


class BatchConsumer:
    """Reads ``topic`` in batches, hands them to ``handle``, commits once they are durable."""

    def __init__(self, settings: Settings, topic: str, group_id: str,
                 handle: Callable[[list[RawMessage]], Awaitable[Durable]],
                 max_batch: int, within_s: float, commit_interval_s: float = 0.5) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.handle = handle
        self.max_batch = max_batch
        self.within_ms = max(1, int(within_s * 1000))
        self.commit_interval_s = commit_interval_s
        self.consumer: AIOKafkaConsumer | None = None
        self.log_check_interval_s = 3.0
        self._last: dict[TopicPartition, RawMessage] = {}
        self._side: AIOKafkaConsumer | None = None
        self._side_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        #: Applied batches waiting for durability, oldest first: (future, next offsets).
        self._inflight: deque[tuple[Durable, dict[TopicPartition, int]]] = deque()
        self._pending: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        """Consume until :meth:`stop`; exceptions from ``handle`` propagate (crash)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=self.max_batch, session_timeout_ms=6000,
            heartbeat_interval_ms=1000, rebalance_timeout_ms=6000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # The broker may hold an empty fetch this long (aiokafka's default is 500 ms):
            # the local broker does not answer a held fetch when a record arrives, so a
            # lone click waited ~0.1-0.5 s before the worker saw it; under load a fetch
            # finds records at once and this changes nothing.
            fetch_max_wait_ms=self.within_ms)
        consumer.subscribe([self.topic],
                           listener=_LogRebalance(self.topic, self._drain_and_commit))
        await consumer.start()
        self.consumer = consumer
        last_commit = last_check = time.monotonic()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=self.within_ms,
                                                 max_records=self.max_batch)
                if batches:
                    by_tp = {tp: [from_record(r) for r in recs] for tp, recs in batches.items()}
                    durable = await self.handle([m for ms in by_tp.values() for m in ms])
                    self._inflight.append(
                        (durable, {tp: ms[-1].offset + 1 for tp, ms in by_tp.items()}))
                    self._last.update({tp: ms[-1] for tp, ms in by_tp.items()})
                elif time.monotonic() - last_check >= self.log_check_interval_s:
                    await self._check_logs(consumer, self._pending)
                    last_check = time.monotonic()
                self._collect_durable()
                if self._pending and time.monotonic() - last_commit >= self.commit_interval_s:
                    await self._commit(consumer, self._pending)
                    self._pending, last_commit = {}, time.monotonic()
            await self._drain_and_commit()
        finally:
            self.consumer = None
            await consumer.stop()
            if self._side is not None:
                await self._side.stop()
                self._side = None

    def _collect_durable(self) -> None:
        """Move the offsets of batches now durable (in order) to the commit set; a
        failed durable write raises here and stops the consumer without committing."""
        while self._inflight and (self._inflight[0][0] is None or self._inflight[0][0].done()):
            durable, offsets = self._inflight.popleft()
            if durable is not None:
                durable.result()
            self._pending.update(offsets)

    async def _drain_and_commit(self) -> None:
        """Wait until every applied batch is durable, then commit (rebalance, shutdown)."""
        for durable, _ in list(self._inflight):
            if durable is not None:
                await asyncio.shield(durable)
        self._collect_durable()
        if self._pending and self.consumer is not None:
            await self._commit(self.consumer, self._pending)
            self._pending = {}

    async def _check_logs(self, consumer: AIOKafkaConsumer,
                          pending: dict[TopicPartition, int]) -> None:
        """While idle: is the last record consumed per partition still in the log?

        Apache Kafka answers a fetch beyond the end of a re-created (shorter) log with
        OFFSET_OUT_OF_RANGE and the client starts again from the beginning. Some brokers
        (the local Tansu among them) answer with nothing instead, and the consumer would
        wait at its old position, skipping every new record below it. So when nothing
        arrives, the record just before the position is looked up; if it is gone or
        different, the log was replaced and the partition is read from its beginning
        (:mod:`streams.epochs` then tells new events from redeliveries).
        """
        for tp in consumer.assignment():
            last = self._last.get(tp)
            if last is None:
                continue
            try:
                fp = await self.fingerprint_at(tp.partition, last.offset, timeout_s=3.0)
            except (ServiceUnavailable, KafkaError) as exc:
                log.info("log check of %s[%d] skipped: %s", self.topic, tp.partition, exc)
                continue
            if fp != last.fingerprint():
                log.warning("%s[%d]: the record at offset %d is gone or different: the log "
                            "was replaced; reading the partition from its beginning",
                            self.topic, tp.partition, last.offset)
                await consumer.seek_to_beginning(tp)
                self._last.pop(tp, None)
                pending.pop(tp, None)
                for _, offsets in self._inflight:  # offsets of the old log: never commit
                    offsets.pop(tp, None)

    @staticmethod
    async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner replays from the last commit
            # and the watermarks skip what was applied here.
            log.warning("offset commit failed (events will be replayed): %s", exc)

    def stop(self) -> None:
        self._stopping.set()

    async def fingerprint_at(self, partition: int, offset: int,
                             timeout_s: float = 10.0) -> str | None:
        """Fingerprint of the record at ``offset`` (``None`` if the log has none there).

        Used by :class:`streams.epochs.LogEpochs` when a batch reaches back below a
        partition's anchor. A separate consumer without a group reads the one record,
        so the main consumer's position and group membership are untouched.
        """
        tp = TopicPartition(self.topic, partition)
        if self._side is None:
            side = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
            await side.start()
            self._side = side
        side = self._side
        async with self._side_lock:
            side.assign([tp])
            side.seek(tp, offset)
            deadline = time.monotonic() + timeout_s
            empty_polls = 0
            while time.monotonic() < deadline:
                records = (await side.getmany(tp, timeout_ms=500, max_records=1)).get(tp, [])
                if records:
                    record = records[0]
                    # Below the target: the position was out of range and reset to the
                    # start of a shorter log. Beyond it: the record is gone.
                    return from_record(record).fingerprint() if record.offset == offset \
                        else None
                empty_polls += 1
                # Only after a second empty poll: some brokers under-report the end
                # offset right after a multi-record produce (see STACK.md).
                if empty_polls >= 2 and (await side.end_offsets([tp]))[tp] <= offset:
                    return None
            raise ServiceUnavailable(f"record {self.topic}[{partition}]@{offset} could not "
                                     f"be read within {timeout_s:.0f}s")

    async def lag(self) -> dict[int, int]:
        """Records behind the partition end, per assigned partition."""
        consumer = self.consumer
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            out[tp.partition] = max(int(high) - int(position), 0)
        return out
