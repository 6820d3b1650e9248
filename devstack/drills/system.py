"""Fault drills against the whole running system, with figures, and the registry by name.

Run by ``python -m scripts.drill [names]``. Each drill starts its own FAISS service, API
and worker (own ports, topics, database, Redis prefix and log folder) on the shared local
stack, so it never disturbs a demo:

- ``worker-kill``: SIGKILL the worker mid-replay, restart it; every user's event count
  must equal what was sent (nothing lost, nothing counted twice).
- ``faiss-restart`` / ``mongodb-restart``: stop the dependency under API load and bring
  it back; zero 5xx, fallbacks counted, time until personalised answers return.
- ``malformed``: fuzzed malformed events interleaved with valid ones; all land in the
  dead-letter topic, the worker stays up, every valid event is applied.
- ``admin-keys``: FAISS write endpoints refuse a missing or wrong key.
- ``oversize``, ``offset-reset``, ``poison-rate``: the worker under hostile input and
  broker events (see :mod:`devstack.drills.stream`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from common.events import interaction_json
from common.kafka import ensure_topics
from common.settings import Settings
from datasets import movielens
from datasets.types import Interactions
from devstack.drills import stream as drill_stream
from devstack.drills.serving import idle_pool, stall_recovery, versions_bounded
from devstack.drills.slow_db import slow_db
from devstack.drills.world import DrillFailed, DrillWorld
from devstack.malformed import malformed_interactions
from devstack.processes import wait_for
from devstack.stack import StackManager


def _ml(settings: Settings) -> Interactions:
    return movielens.load(settings.cache_dir).interactions.sorted_by_time()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


# --- drills ---------------------------------------------------------------------------------
def worker_kill(world: DrillWorld, events: int = 8_000) -> dict[str, Any]:
    inter = _ml(world.settings).take(slice(0, events))
    first = events * 3 // 8
    world.apps.up(["worker"])
    world.replay(inter.take(slice(0, first)))
    wait_for(lambda: world.total_events() >= first // 3, 120, "the worker to apply events")
    pid = world.apps.pid("worker")
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    applied_at_kill = world.total_events()
    world.replay(inter.take(slice(first, None)))
    world.apps.down(["worker"])  # clears the stale PID file
    t0 = time.perf_counter()
    world.apps.up(["worker"])
    wait_for(lambda: world.total_events() >= events, 180, "all events after the restart")
    recovery_s = time.perf_counter() - t0
    time.sleep(1.0)  # anything extra would show up now
    got = {u: d["n_events"] for u, d in world.users().items()}
    expected = dict(Counter(inter.users.tolist()))
    if got != expected:
        diff = {u: (got.get(u), n) for u, n in expected.items() if got.get(u) != n}
        raise DrillFailed(f"per-user event counts differ (got, expected): "
                          f"{dict(list(diff.items())[:5])} ({len(diff)} users)")
    return {"drill": "worker-kill", "events": events, "applied_at_kill": applied_at_kill,
            "recovery_s": round(recovery_s, 2), "lost": 0, "double_counted": 0}


class ApiLoad:
    """Closed-loop API clients in threads recording (time, status, source, latency s)."""

    def __init__(self, base: str, users: list[str], clients: int = 3) -> None:
        self.base, self.users = base, users
        self.records: list[tuple[float, int, str, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(j,), daemon=True)
                         for j in range(clients)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            user = rng.choice(self.users)
            t0 = time.perf_counter()
            status, body = http_get(f"{self.base}/v1/recommendations?user_id={user}&k=10")
            self.records.append((time.monotonic(), status, str(body.get("source", "")),
                                 time.perf_counter() - t0))
            time.sleep(0.01)

    def __enter__(self) -> ApiLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


def _seed_for_serving(world: DrillWorld, events: int = 5_000) -> list[str]:
    """Worker learns from some history; wait until the API answers personally."""
    world.apps.up(["faiss", "api", "worker"])
    inter = _ml(world.settings).take(slice(0, events))
    world.replay(inter)
    wait_for(lambda: world.total_events() >= events, 120, "seed events applied")
    users = sorted(set(inter.users.tolist()))

    def personal() -> bool:
        return http_get(f"{world.api}/v1/recommendations?user_id={users[0]}&k=5")[1].get(
            "source") == "personalized"

    wait_for(personal, 60, "personalised recommendations")
    return users


def dependency_restart(world: DrillWorld, which: str, down_s: float = 3.0) -> dict[str, Any]:
    """Stop ``faiss`` or ``mongodb`` under API load, restart it, measure the damage."""
    users = _seed_for_serving(world)
    stack = StackManager(world.base)
    if which == "mongodb" and stack.pid("mongodb") is None:
        return {"drill": "mongodb-restart", "skipped": "MongoDB was not started by "
                "scripts.stack here, so the drill will not stop it"}
    with ApiLoad(world.api, users) as load:
        time.sleep(1.0)
        t_down = time.monotonic()
        if which == "faiss":
            world.apps.down(["faiss"])
        else:
            stack.down(["mongodb"])
        time.sleep(down_s)
        t_up = time.monotonic()
        if which == "faiss":
            world.apps.up(["faiss"])
        else:
            stack.up(["mongodb"])
        t_ready = time.monotonic()
        deadline = time.monotonic() + 60
        recovered_at = None
        while time.monotonic() < deadline:
            recent = [r for r in load.records if r[0] > t_ready]
            if any(r[2] == "personalized" for r in recent[-5:]):
                recovered_at = next(r[0] for r in recent if r[2] == "personalized")
                break
            time.sleep(0.1)
        time.sleep(0.5)
    records = load.records
    errors_5xx = sum(1 for r in records if r[1] >= 500 or r[1] == 0)
    during = [r for r in records if t_down <= r[0] <= t_up]
    fallbacks = sum(1 for r in during if r[1] == 200 and r[2] == "popular")
    cached = sum(1 for r in during if r[1] == 200 and r[2] == "personalized")
    result = {"drill": f"{which}-restart", "requests": len(records), "errors_5xx": errors_5xx,
              "requests_while_down": len(during), "fallbacks_while_down": fallbacks,
              "personalized_while_down": cached,
              "restart_s": round(t_ready - t_up, 2),
              "recovery_s": None if recovered_at is None else round(recovered_at - t_ready, 2)}
    if errors_5xx:
        raise DrillFailed(f"{errors_5xx} requests failed (5xx or no answer): {result}")
    if recovered_at is None:
        raise DrillFailed(f"personalised answers did not return within 60 s: {result}")
    # Without FAISS there are no candidates: answers must be popular fallbacks. Without
    # MongoDB the API may still answer users it holds in memory, personally.
    if which == "faiss" and during and fallbacks == 0:
        raise DrillFailed(f"no popular fallbacks while {which} was down: {result}")
    if during and fallbacks + cached < len(during):
        raise DrillFailed(f"some answers while {which} was down were neither: {result}")
    return result


def malformed(world: DrillWorld, bad: int = 1_000, good: int = 3_000) -> dict[str, Any]:
    from devstack.readback import count_until, start_consumer

    s = world.settings
    valid = _ml(s).take(slice(0, good))
    junk = malformed_interactions(bad, seed=7, max_bytes=s.max_event_bytes)
    world.apps.up(["worker"])
    stream = [(u.encode(), interaction_json(u, i, "rating", t, r))
              for u, i, r, t in zip(valid.users.tolist(), valid.items.tolist(),
                                    valid.ratings.tolist(), valid.ts_ms.tolist(), strict=True)]
    rng = random.Random(3)
    for j, raw in enumerate(junk):
        stream.insert(rng.randrange(len(stream) + 1), (f"junk{j}".encode(), raw))

    async def go() -> int:
        await ensure_topics(s, [s.topic_interactions, s.topic_items, s.topic_dead_letter])
        dlq = await start_consumer(s, [s.topic_dead_letter], f"drill-dlq-{uuid.uuid4().hex[:6]}")
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            for key, value in stream:
                await producer.send(s.topic_interactions, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
        try:
            got = await count_until(dlq, {s.topic_dead_letter: bad}, idle_timeout_s=60)
        finally:
            await dlq.stop()
        return got.counts[s.topic_dead_letter]

    dead = asyncio.run(go())
    wait_for(lambda: world.total_events() >= good, 120, "valid events applied")
    alive = world.apps.pid("worker") is not None
    applied = world.total_events()
    result = {"drill": "malformed", "malformed_sent": bad, "dead_letters": dead,
              "valid_sent": good, "valid_applied": applied, "worker_alive": alive}
    if dead != bad or applied != good or not alive:
        raise DrillFailed(f"malformed drill: {result}")
    return result


def admin_keys(world: DrillWorld) -> dict[str, Any]:
    world.apps.up(["faiss"])
    url = f"{world.settings.faiss_url}/v1/items/drill-item"
    body = json.dumps({"vector": [0.0] * 64}).encode()
    statuses = {}
    for label, key in (("missing", None), ("wrong", "not-the-key")):
        req = urllib.request.Request(url, data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
        if key:
            req.add_header("X-API-Key", key)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                statuses[label] = resp.status
        except urllib.error.HTTPError as exc:
            statuses[label] = exc.code
    result = {"drill": "admin-keys", **{f"{k}_key_status": v for k, v in statuses.items()}}
    if set(statuses.values()) != {401}:
        raise DrillFailed(f"admin endpoints accepted a bad key: {result}")
    return result


DRILLS: dict[str, Callable[..., dict[str, Any]]] = {
    "worker-kill": worker_kill,
    "faiss-restart": lambda w, **kw: dependency_restart(w, "faiss", **kw),
    "mongodb-restart": lambda w, **kw: dependency_restart(w, "mongodb", **kw),
    "malformed": malformed,
    "admin-keys": admin_keys,
    "oversize": drill_stream.oversize,
    "offset-reset": drill_stream.offset_reset,
    "poison-rate": drill_stream.poison_rate,
    "idle-pool": idle_pool,
    "stall-recovery": stall_recovery,
    "versions-bounded": versions_bounded,
    "slow-db": slow_db,
}


def run_drill(name: str, base: Settings | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one drill in a fresh world; always cleans up."""
    base = base or Settings.from_env()
    StackManager(base).up()
    with tempfile.TemporaryDirectory(prefix=f"drill-{name}-") as tmp:
        world = DrillWorld(base, Path(tmp))
        try:
            return DRILLS[name](world, **kwargs)
        except Exception:
            for row in world.apps.status():
                log = Path(str(row["log"]))
                if log.exists():
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                    print(f"--- {row['service']} log tail ---\n{tail}", file=sys.stderr)
            raise
        finally:
            world.cleanup()
