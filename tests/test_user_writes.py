"""The user-document write policy (``streams/user_writes.py``) on a simulated server.

``FrozenServer`` is a fake store with its own clock: it applies documents at a fixed
rate while it runs, freezes during given intervals, answers a write that cannot finish
within its time limit with a timeout, and then, like SecantusDB with a new document,
*keeps applying* the abandoned write in the background. It fails the test if a write
arrives while an abandoned one can still land (two writes in flight), and it counts how
often each document version is applied (a resend of a document that had landed shows up
as a second application).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pymongo.errors
import pytest

from common.stores import UserDoc
from streams.user_writes import ChunkSize, UserWriter, WritePolicy, backoff_s, in_doubt


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.gauges: dict[str, list[float]] = {}
        self.timings: dict[str, list[float]] = {}

    def incr(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def gauge(self, name: str, value: float) -> None:
        self.gauges.setdefault(name, []).append(value)

    def timing(self, name: str, ms: float) -> None:
        self.timings.setdefault(name, []).append(ms)

    def pipeline(self) -> FakeMetrics:
        return self

    def send(self) -> None:
        pass


class FrozenServer:
    """A fake :class:`~streams.user_writes.UserDocStore` with a fake clock."""

    def __init__(self, freezes: Sequence[tuple[float, float]] = (),
                 docs_per_s: float = 1000.0, stall_s: float = 0.0) -> None:
        self.now = 0.0
        self.stall_s = stall_s  # running time an abandoned write waits (a lock) before going on
        self.freezes = sorted(freezes)
        self.rate = docs_per_s
        self.stored: dict[str, tuple[Any, int]] = {}
        self.applied: Counter[tuple[str, int]] = Counter()
        self.abandoned: list[UserDoc] = []  # an abandoned write's documents still to apply
        self._credit = 0.0  # document-fractions the server could apply so far
        self.write_sizes: list[int] = []
        self.sleeps: list[float] = []

    # --- time --------------------------------------------------------------------------
    def running(self, t: float) -> bool:
        return not any(a <= t < b for a, b in self.freezes)

    def _run_time(self, a: float, b: float) -> float:
        """Seconds in [a, b) during which the server was not frozen."""
        frozen = sum(max(0.0, min(b, fb) - max(a, fa)) for fa, fb in self.freezes)
        return max(b - a - frozen, 0.0)

    def advance(self, t: float) -> None:
        """Move the clock to ``t``; the abandoned write makes progress meanwhile."""
        if t <= self.now:
            return
        if self.abandoned:
            self._credit += self._run_time(self.now, t) * self.rate
            while self.abandoned and self._credit >= 1.0:
                self._apply(self.abandoned.pop(0))
                self._credit -= 1.0
        if not self.abandoned:
            self._credit = 0.0
        self.now = t

    def _apply(self, doc: UserDoc) -> None:
        self.stored[doc.user_id] = (doc.watermark, doc.n_events)
        self.applied[(doc.user_id, doc.n_events)] += 1

    def _finish_time(self, start: float, work_s: float) -> float:
        t = start
        while work_s > 1e-12:
            nxt = min([b for a, b in self.freezes if a <= t < b] or [float("inf")])
            if nxt != float("inf"):
                t = nxt
                continue
            upcoming = [a for a, _ in self.freezes if a > t]
            span = (min(upcoming) - t) if upcoming else work_s
            step = min(span, work_s)
            t += step
            work_s -= step
        return t

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.advance(self.now + seconds)

    def clock(self) -> float:
        return self.now

    # --- the store --------------------------------------------------------------------
    def upsert_many(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> int:
        assert timeout_s is not None, "every write must be bounded"
        assert not self.abandoned, "a write started while an abandoned one could still land"
        self.write_sizes.append(len(docs))
        start = self.now
        done_at = self._finish_time(start, len(docs) / self.rate)
        if done_at <= start + timeout_s:
            for doc in docs:
                self._apply(doc)
            self.advance(done_at)
            return len(docs)
        self.abandoned = list(docs)
        self.advance(start + timeout_s)  # applies what the server managed meanwhile
        self._credit -= self.stall_s * self.rate
        raise pymongo.errors.NetworkTimeout("timed out")

    def landed(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> set[str]:
        assert timeout_s is not None, "every probe must be bounded"
        if not self.running(self.now):
            self.advance(self.now + timeout_s)
            raise pymongo.errors.NetworkTimeout("timed out")
        self.advance(self.now + 0.001)
        return {d.user_id for d in docs
                if self.stored.get(d.user_id) == (d.watermark, d.n_events)}


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _docs(n: int, version: int = 1) -> list[UserDoc]:
    return [UserDoc(f"u{k}", [0.0], "m", n_events=version, watermark={"p": 0, "o": version})
            for k in range(n)]


def _writer(server: FrozenServer, metrics: FakeMetrics | None = None, max_chunk: int = 500,
            seed: int = 0) -> UserWriter:
    policy = WritePolicy(max_chunk=max_chunk, timeout_s=2.0, backoff_max_s=5.0)
    return UserWriter(server, metrics or FakeMetrics(), policy,
                      rng=random.Random(seed), sleep=server.sleep, clock=server.clock,
                      run=_inline)


def test_a_quick_server_gets_chunks_of_the_maximum_and_no_probe() -> None:
    server, metrics = FrozenServer(), FakeMetrics()
    asyncio.run(_writer(server, metrics).write(_docs(1_200)))
    assert server.write_sizes == [500, 500, 200]
    assert len(server.stored) == 1_200 and metrics.counts["users.write.probes"] == 0


def test_an_abandoned_write_is_waited_out_and_only_missing_documents_are_resent() -> None:
    # The first write (0.5 s of work) is caught by a 5 s freeze at 0.1 s: it times out
    # with ~100 documents applied, and the server goes on applying the rest after 5.1 s.
    server, metrics = FrozenServer(freezes=[(0.1, 5.1)]), FakeMetrics()
    asyncio.run(_writer(server, metrics).write(_docs(500)))
    assert len(server.stored) == 500
    assert set(server.applied.values()) == {1}, "some document was written twice"
    assert metrics.counts["users.write.timeouts"] == 1
    assert metrics.counts["users.write.retries"] == 0  # the abandoned write landed it all


def test_a_write_killed_midway_is_completed_by_resending_only_what_is_missing() -> None:
    server, metrics = FrozenServer(freezes=[(0.1, 5.1)]), FakeMetrics()
    writer = _writer(server, metrics)

    def killed(docs: Sequence[UserDoc], timeout_s: float | None = None) -> int:
        server.upsert_many = original  # type: ignore[method-assign]
        try:
            return original(docs, timeout_s)
        finally:  # the timed-out write dies on the server (maxTimeMS) with 100 applied
            server.abandoned = []

    original = server.upsert_many
    server.upsert_many = killed  # type: ignore[method-assign]
    asyncio.run(writer.write(_docs(500)))
    assert len(server.stored) == 500 and set(server.applied.values()) == {1}
    assert metrics.counts["users.write.retries"] == 1
    assert metrics.counts["users.write.resent"] == 500 - 100
    assert server.write_sizes[0] == 500 and max(server.write_sizes[1:]) <= 250


def test_a_stalled_abandoned_write_is_not_taken_for_a_dead_one() -> None:
    # A slow server (200 documents/s) times the write out with 400 applied; the rest of
    # it then waits 1.5 s (less than its time limit) before going on, while the server
    # answers probes: at first they see no progress.
    server, metrics = FrozenServer(docs_per_s=200.0, stall_s=1.5), FakeMetrics()
    asyncio.run(_writer(server, metrics).write(_docs(500)))
    assert len(server.stored) == 500 and set(server.applied.values()) == {1}
    assert metrics.counts["users.write.timeouts"] == 1


def test_a_freeze_between_two_probes_is_not_taken_for_quiet() -> None:
    # 2 documents/s: the write times out with 4 applied; the first probe (~2.17 s)
    # answers, then the server freezes 2.2-4.2 s. A probe just after the freeze would see
    # the same documents landed (the abandoned write did not run meanwhile) though it is
    # far from dead: the quiet window must be one the server ran through.
    server = FrozenServer(freezes=[(2.2, 4.2)], docs_per_s=2.0)
    asyncio.run(_writer(server).write(_docs(500)))
    assert len(server.stored) == 500 and set(server.applied.values()) == {1}


@pytest.mark.parametrize("seed", range(6))
def test_random_freezes_never_overlap_writes_or_write_a_version_twice(seed: int) -> None:
    rng = random.Random(seed)
    freezes, t = [], rng.uniform(0.0, 0.5)
    while t < 60.0:
        length = rng.uniform(1.0, 4.0)
        freezes.append((t, t + length))
        t += length + rng.uniform(0.5, 2.0)
    server, metrics = FrozenServer(freezes, docs_per_s=rng.choice([300.0, 1000.0])), \
        FakeMetrics()
    writer = _writer(server, metrics, seed=seed)
    for batch in range(1, 6):  # later batches carry newer versions of the same users
        asyncio.run(writer.write(_docs(1_500, version=batch)))
        assert all(v == (None, batch) or v == ({"p": 0, "o": batch}, batch)
                   for v in server.stored.values())
    assert len(server.stored) == 1_500
    assert set(server.applied.values()) == {1}, "a document version was written twice"
    assert metrics.counts["users.write.timeouts"] > 0  # the freezes did bite


def test_chunk_halves_on_timeouts_and_grows_back_on_successes() -> None:
    server, metrics = FrozenServer(freezes=[(0.1, 5.1)]), FakeMetrics()
    writer = _writer(server, metrics)
    asyncio.run(writer.write(_docs(3_000)))
    sizes = metrics.gauges["users.write.chunk_size"]
    assert sizes[0] == 250 and sizes[-1] == 500
    assert sizes == sorted(sizes)  # one timeout, then only growth


def test_probes_back_off_exponentially_with_jitter_while_frozen() -> None:
    server = FrozenServer(freezes=[(0.1, 120.0)])
    asyncio.run(_writer(server).write(_docs(500)))
    waits = server.sleeps[:8]  # the probes' backoff while the server stays frozen
    assert all(0 <= w <= min(5.0, 0.1 * 2 ** (n + 1)) for n, w in enumerate(waits))
    assert max(server.sleeps) <= 5.0  # the backoff cap (probes in a quiet window: 0.5 s)
    assert len(server.sleeps) < 120  # not a busy loop: ~one probe per 2.5 s on average


def test_concurrent_calls_never_have_two_writes_in_flight() -> None:
    in_flight, peak = 0, 0

    async def yielding(fn: Any, *args: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        try:
            return fn(*args)
        finally:
            await asyncio.sleep(0)
            in_flight -= 1

    server = FrozenServer()
    writer = UserWriter(server, FakeMetrics(),
                        WritePolicy(max_chunk=100, timeout_s=2.0, backoff_max_s=5.0),
                        sleep=server.sleep, clock=server.clock, run=yielding)

    async def both() -> None:
        await asyncio.gather(writer.write(_docs(300)), writer.write(_docs(300, version=2)))

    asyncio.run(both())
    assert peak == 1 and len(server.write_sizes) == 6


def test_errors_that_are_not_timeouts_propagate() -> None:
    class Refusing(FrozenServer):
        def upsert_many(self, docs: Sequence[UserDoc], timeout_s: float | None = None) -> int:
            raise pymongo.errors.OperationFailure("document too large", code=10334)

    server = Refusing()
    with pytest.raises(pymongo.errors.OperationFailure):
        asyncio.run(_writer(server).write(_docs(10)))


def test_which_errors_leave_a_write_in_doubt() -> None:
    assert in_doubt(pymongo.errors.NetworkTimeout("t"))
    assert in_doubt(pymongo.errors.AutoReconnect("reset"))
    assert in_doubt(pymongo.errors.ExecutionTimeout("maxTimeMS", code=50))
    assert not in_doubt(pymongo.errors.OperationFailure("bad", code=2))
    assert not in_doubt(ValueError("x"))


def test_chunk_size_and_backoff_bounds() -> None:
    size = ChunkSize(maximum=100, minimum=16)
    for _ in range(10):
        size.shrink()
    assert size.value == 16
    rng = random.Random(1)
    draws = [backoff_s(20, 0.1, 5.0, rng) for _ in range(2_000)]
    assert max(draws) <= 5.0 and min(draws) >= 0.0 and 2.0 < sum(draws) / len(draws) < 3.0
    with pytest.raises(ValueError):
        WritePolicy(max_chunk=0, timeout_s=1.0, backoff_max_s=1.0)
