"""Tracker issue 15, defect 3 (a slow database is made slower), against real servers.

- Every user-document write and probe the worker sends carries a server-side limit
  (``maxTimeMS``) and is at most one chunk (seen on the wire, shared local SecantusDB).
- The ``slow-db`` drill in a bounded form (15 s of SIGSTOP/SIGCONT bursts on a private
  SecantusDB): nothing lost or counted twice, no document version written twice, no
  older version written over a newer one (both read from the server's oplog). On the
  code before the fix the same run wrote hundreds of versions twice: abandoned batches
  that the server went on executing while the worker sent them again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from common.settings import Settings
from common.stores import UserDoc, UserStore
from devstack.drills.system import run_drill

pytestmark = [pytest.mark.integration]


class Sent(monitoring.CommandListener):
    """Every command this client sends, as sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def watched_db(stack: Settings) -> Iterator[tuple[Any, Sent]]:
    sent = Sent()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        stack.mongo_uri, serverSelectionTimeoutMS=5000, event_listeners=[sent])
    name = f"{stack.mongo_db}_slowdb"
    yield client[name], sent
    client.drop_database(name)
    client.close()


class _NoMetrics:
    def incr(self, *a: Any) -> None: ...
    def gauge(self, *a: Any) -> None: ...
    def timing(self, *a: Any) -> None: ...
    def pipeline(self) -> _NoMetrics:
        return self
    def send(self) -> None: ...


def test_every_user_write_and_probe_is_bounded_on_the_server(
        watched_db: tuple[Any, Sent]) -> None:
    from streams.user_writes import UserWriter, WritePolicy  # here: the drill test runs alone

    db, sent = watched_db
    store = UserStore(db)
    policy = WritePolicy(max_chunk=100, timeout_s=3.0, backoff_max_s=1.0)
    writer = UserWriter(store, _NoMetrics(), policy,
                        rng=random.Random(0))
    docs = [UserDoc(f"u{k}", [0.5], "m1", n_events=1, watermark={"p": 0, "o": k})
            for k in range(250)]
    asyncio.run(writer.write(docs))
    updates = [c for c in sent.sent if "update" in c]
    assert [len(c["updates"]) for c in updates] == [100, 100, 50]
    assert all(0 < c["maxTimeMS"] <= 3000 for c in updates)
    assert store.landed(docs, timeout_s=3.0) == {d.user_id for d in docs}
    probe = [c for c in sent.sent if "find" in c][-1]
    assert 0 < probe["maxTimeMS"] <= 3000
    newer = UserDoc("u0", [0.5], "m1", n_events=2, watermark={"p": 0, "o": 999})
    assert store.landed([newer], timeout_s=3.0) == set()  # stored version is older


@pytest.mark.slow
def test_slow_db_drill_loses_nothing_and_leaves_no_abandoned_writes(stack: Settings) -> None:
    # Idleness is timed, so only a generous bound here; the CLI drill holds 10 s.
    result = run_drill("slow-db", stack, burst_s=15.0, users=2_000, events_per_user=4,
                       produce_s=None, idle_bound_s=60.0)
    print(result)
    assert result["freezes"] > 0 and result["frozen_s"] > 0
    assert result["lost"] == 0 and result["double_counted"] == 0
    assert result["stale_overwrites"] == 0
    assert result["redundant_writes"] == 0, result
