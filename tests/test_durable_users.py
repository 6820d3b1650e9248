"""The durable writer of user documents on in-memory stand-ins (no database, no clock).

Checks the rules of :mod:`streams.durable_users`: documents of the same user coalesce
across batches while a write is in flight, a batch is durable only once every batch
before it is, the backlog is bounded (users and age), submitted documents are copies,
and a write that fails stops everything after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from common.stores import UserDoc, as_clicks
from streams.durable_users import DurableUsers


class Metrics:
    def pipeline(self) -> Metrics:
        return self

    def incr(self, *a: Any) -> None:
        pass

    def timing(self, *a: Any) -> None:
        pass

    def gauge(self, *a: Any) -> None:
        pass

    def send(self) -> None:
        pass


class HeldWriter:
    """Records each write as ``[(user, n_events), ...]``; holds each write until
    :meth:`allow` lets it through."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.writes: list[list[tuple[str, int]]] = []
        self.passes = asyncio.Semaphore(0)
        self.started = 0
        self.fail = fail

    def allow(self, n: int = 100) -> None:
        for _ in range(n):
            self.passes.release()

    async def write(self, docs: Sequence[UserDoc]) -> None:
        self.started += 1
        await self.passes.acquire()
        if self.fail is not None:
            raise self.fail
        self.writes.append([(d.user_id, d.n_events) for d in docs])


def doc(user: str, n: int) -> UserDoc:
    return UserDoc(user, [float(n)], "m", recent=as_clicks([f"i{n}"]), n_events=n,
                   watermark={"p": 0, "o": n, "e": 0})


async def settle() -> None:
    """Let every ready task run (no time passes: the writers here never sleep)."""
    for _ in range(20):
        await asyncio.sleep(0)


def writer_and_durable(clock: Any = None, **limits: Any) -> tuple[HeldWriter, DurableUsers]:
    held = HeldWriter()
    kw: dict[str, Any] = {"max_dirty": 1000, "max_lag_s": 60.0, **limits}
    if clock is not None:
        kw["clock"] = clock
    return held, DurableUsers(held, Metrics(), **kw)  # type: ignore[arg-type]


def test_a_user_touched_by_many_batches_during_a_write_is_written_once_in_its_last_version(
        ) -> None:
    async def run() -> None:
        held, durable = writer_and_durable()
        await durable.submit([doc("a", 1), doc("b", 1)])
        await settle()  # the first flush is in flight, held
        for n in (2, 3, 4):
            await durable.submit([doc("a", n)])
        await durable.submit([doc("c", 1)])
        held.allow()
        await durable.drain()
        assert held.writes == [[("a", 1), ("b", 1)], [("a", 4), ("c", 1)]]

    asyncio.run(run())


def test_a_batch_is_durable_only_once_every_earlier_batch_is() -> None:
    async def run() -> None:
        held, durable = writer_and_durable()
        first = durable.durable(await durable.submit([doc("a", 1)]))
        await settle()
        second = durable.durable(await durable.submit([doc("b", 1)]))
        empty = durable.durable(await durable.submit([]))  # no documents of its own
        await settle()
        assert not first.done() and not second.done() and not empty.done()
        held.allow(1)
        await first
        await settle()
        assert held.writes == [[("a", 1)]] and not second.done() and not empty.done()
        held.allow(1)
        await asyncio.gather(second, empty)
        assert held.writes == [[("a", 1)], [("b", 1)]]
        assert durable.durable_seq == 3 and durable.pending == 0

    asyncio.run(run())


def test_applying_waits_when_too_many_users_are_pending() -> None:
    async def run() -> None:
        held, durable = writer_and_durable(max_dirty=3)
        await durable.submit([doc("a", 1), doc("b", 1)])
        await settle()
        blocked = asyncio.create_task(durable.submit([doc("c", 1), doc("d", 1)]))
        await settle()
        assert not blocked.done(), "4 users pending > 3: the batch must wait"
        held.allow()
        await blocked
        assert durable.pending <= 3

    asyncio.run(run())


def test_applying_waits_when_the_oldest_pending_document_is_too_old() -> None:
    now = [0.0]

    async def run() -> None:
        held, durable = writer_and_durable(clock=lambda: now[0], max_lag_s=5.0)
        await durable.submit([doc("a", 1)])
        await settle()
        now[0] = 4.0
        await durable.submit([doc("b", 1)])  # 4 s old: still within the bound
        now[0] = 6.0
        blocked = asyncio.create_task(durable.submit([doc("c", 1)]))
        await settle()
        assert not blocked.done(), "the oldest pending document is 6 s old > 5 s"
        held.allow()
        await blocked
        await durable.drain()
        assert durable.lag_s() == 0.0

    asyncio.run(run())


def test_submitted_documents_are_copies_and_latest_gives_the_pending_version() -> None:
    async def run() -> None:
        held, durable = writer_and_durable()
        mine = doc("a", 1)
        await durable.submit([mine])
        mine.recent.append(("later", "click"))
        mine.n_events = 99
        pending = durable.latest("a")
        assert pending is not None and pending.history == ["i1"] and pending.n_events == 1
        pending.recent.append(("x", "view"))  # a copy again: the pending version is untouched
        assert durable.latest("a").history == ["i1"]  # type: ignore[union-attr]
        held.allow()
        await durable.drain()
        assert durable.latest("a") is None
        assert held.writes == [[("a", 1)]]

    asyncio.run(run())


def test_a_failed_write_fails_the_waiting_batches_and_stops_applying() -> None:
    async def run() -> None:
        held, durable = writer_and_durable()
        held.fail = ValueError("not transient")
        fut = durable.durable(await durable.submit([doc("a", 1)]))
        held.allow()
        with pytest.raises(ValueError):
            await fut
        with pytest.raises(RuntimeError, match="durable user writes stopped"):
            await durable.submit([doc("b", 1)])
        assert durable.durable_seq == 0

    asyncio.run(run())


def test_the_consumer_commits_a_batch_only_after_it_and_every_earlier_batch_are_durable(
        ) -> None:
    from aiokafka.structs import TopicPartition

    from common.settings import Settings
    from streams.direct import BatchConsumer

    async def handle(messages: Any) -> None:
        return None

    async def run() -> None:
        consumer = BatchConsumer(Settings(), "t", "g", handle, 10, 0.05)
        tp = TopicPartition("t", 0)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        consumer._inflight.extend([(first, {tp: 10}), (second, {tp: 20}), (None, {tp: 30})])
        second.set_result(None)
        consumer._collect_durable()
        assert consumer._pending == {}  # batch 2 is durable, batch 1 is not: nothing yet
        first.set_result(None)
        consumer._collect_durable()
        assert consumer._pending == {tp: 30} and not consumer._inflight

        failed = loop.create_future()
        failed.set_exception(ValueError("write failed"))
        consumer._inflight.append((failed, {tp: 40}))
        with pytest.raises(ValueError):
            consumer._collect_durable()
        assert consumer._pending == {tp: 30}  # never committed past a failed write

    asyncio.run(run())


def test_a_snapshot_copies_every_field_of_the_document() -> None:
    """Built field by field for speed: a field added to ``UserDoc`` must be copied too."""
    import dataclasses

    from streams.durable_users import SHARED_FIELDS, snapshot

    doc = UserDoc("u", [1.0], "v", recent=as_clicks(["a"]), n_events=2, last_event_ms=3,
                  watermark={"p": 0, "o": 1}, event_ids=[["e", "d"]], long_vector=[0.5])
    copy = snapshot(doc)
    for f in dataclasses.fields(UserDoc):
        value = getattr(doc, f.name)
        assert getattr(copy, f.name) == value, f.name
        if isinstance(value, list | dict) and f.name not in SHARED_FIELDS:
            assert getattr(copy, f.name) is not value, f.name


def test_flushes_are_spaced_by_the_minimum_interval_unless_drained_or_pressed() -> None:
    """A flush starts ``min_interval_s`` after the previous one started (here 10 s on a
    fake clock): the users touched meanwhile wait and are written once, together. A
    drain, or the back-pressure limit, starts the waiting flush at once."""
    async def run() -> None:
        now = [0.0]
        held, durable = writer_and_durable(clock=lambda: now[0], min_interval_s=10.0,
                                           max_dirty=3)
        held.allow()
        await durable.submit([doc("a", 1)])
        await settle()
        assert held.writes == [[("a", 1)]]  # the first flush is not delayed
        await durable.submit([doc("a", 2), doc("b", 1)])
        now[0] = 4.0
        await durable.submit([doc("a", 3)])
        await settle()
        assert len(held.writes) == 1  # 4 s after the last flush began: still waiting
        pressed = asyncio.ensure_future(durable.submit([doc("c", 1), doc("d", 1)]))
        await settle()  # 4 users pending > max_dirty 3: the waiting flush starts now
        await pressed
        # coalesced: a written once, in its latest version, with everything pending
        assert held.writes[1] == [("b", 1), ("a", 3), ("c", 1), ("d", 1)]
        now[0] = 5.0
        await durable.submit([doc("e", 1)])
        await durable.drain()  # no wait for the interval
        assert held.writes[2:] == [[("e", 1)]]

    asyncio.run(run())


def test_a_minimum_interval_must_stay_below_the_lag_bound() -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        writer_and_durable(min_interval_s=60.0)
