"""The ``slow-db`` drill: the worker against a MongoDB that freezes in bursts.

    python -m scripts.drill slow-db        # 60 s of bursts (tests run 15 s via run_drill)

Tracker issue 15, defect 3: while the database was slow the worker re-sent the same
5,000-document write every ~15 s; the abandoned copies piled up on the server, which then
kept a core busy for half an hour after the worker had stopped. This drill repeats that
situation and measures what is left behind:

1. A **private** SecantusDB on a free port (its own data folder; the shared one on 27017
   is never touched) and a worker pointed at it through ``RECSYS_MONGO_URI``.
2. Clicks are produced while the database is SIGSTOPped and SIGCONTed in random bursts
   (1-4 s frozen, 0.5-2 s running; seeded). By default, as in the incident, 10,000 new
   users click once, all within the first 5 s: the worker meets full 5,000-event
   batches of new users. The tests send several clicks per user, shuffled and spread
   over the bursts (``produce_s=None``), so that consecutive batches share users and an
   abandoned write could overwrite a newer version.
3. After the last SIGCONT the drill watches, without querying MongoDB itself, the
   server's CPU (psutil), its sockets (``CLOSE_WAIT`` = the client gave up and the
   server still holds the request) and the worker's committed offsets (lag).
4. Then it reads the users back (``lost``/``double_counted`` against what was sent) and
   the server's oplog: a document version written twice is ``redundant_writes``, an
   older version written after a newer one is ``stale_overwrites``.

``db_idle_after_s`` is the time from the last SIGCONT to the start of the final stretch
in which the server's CPU stays under 10% of a core, observed until the worker has
caught up and 3 s beyond (so it includes the catch-up itself). Figures depend on what
else the machine runs; the JSON line says how long the database was frozen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pymongo
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from common.events import interaction_json
from common.kafka import ensure_topics
from common.settings import PROJECT_ROOT, Settings
from devstack.apps import AppManager
from devstack.drills.world import DrillFailed
from devstack.processes import free_port, wait_for
from devstack.statsd_listener import StatsdListener

if TYPE_CHECKING:
    from devstack.drills.world import DrillWorld

IDLE_CPU_PERCENT = 10.0  # of one core: heartbeats and TTL sweeps stay far below
IDLE_TARGET_S = 10.0  # the acceptance bound


class PrivateMongo:
    """A SecantusDB server of our own, on a free port, that this process may SIGSTOP."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?journal=true"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> PrivateMongo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = PROJECT_ROOT / ".venv" / "bin" / "secantusd-py"
        cmd = [str(exe if exe.exists() else "secantusd-py"), "--host", "127.0.0.1",
               "--port", str(self.port), "--storage-path", str(self.data_dir),
               "--log-level", "WARNING"]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"secantusd exited with {self.proc.returncode}; "
                                   f"log {self.log_path}")
            try:
                client.admin.command("ping")
                return True
            except pymongo.errors.PyMongoError:
                return False

        try:
            wait_for(answers, timeout_s, f"the private SecantusDB on port {self.port}")
        finally:
            client.close()
        return self

    def resume(self) -> None:
        """SIGCONT (harmless when it runs already)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> PrivateMongo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Observation:
    """What the monitor saw, sample by sample (monotonic seconds)."""

    cpu: list[tuple[float, float]] = field(default_factory=list)  # (t, % of one core)
    lag: list[tuple[float, int]] = field(default_factory=list)
    close_wait_max: int = 0
    connections_max: int = 0
    frozen_s: float = 0.0
    freezes: int = 0
    bursts_end: float = 0.0
    caught_up_at: float | None = None


def _server_sockets(proc: psutil.Process, port: int) -> tuple[int, int]:
    """(connections to the server port, of which the client side has closed)."""
    conns = [c for c in proc.net_connections(kind="tcp")
             if c.laddr and c.laddr.port == port and c.raddr]
    return len(conns), sum(1 for c in conns if c.status == psutil.CONN_CLOSE_WAIT)


def _events(users: int, per_user: int, seed: int) -> list[tuple[str, bytes]]:
    """Shuffled clicks, unique in content (no producer-duplicate look-alikes)."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    out = [(f"sdb-u{u}", interaction_json(f"sdb-u{u}", f"sdb-i{rng.randrange(500)}", "click",
                                          now_ms - 60_000 + k * users + u))
           for u in range(users) for k in range(per_user)]
    rng.shuffle(out)
    return out


async def _committed_lag(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> int:
    lag = 0
    for tp, end in ends.items():
        committed = await consumer.committed(tp)
        lag += max(end - (committed or 0), 0)
    return lag


async def _run_load(settings: Settings, db: PrivateMongo, events: list[tuple[str, bytes]],
                    burst_s: float, produce_s: float, seed: int,
                    observe_cap_s: float) -> Observation:
    """Produce ``events`` during the bursts, then watch the server and the worker's lag."""
    obs = Observation()
    proc = psutil.Process(db.pid)
    proc.cpu_percent(None)
    topic = settings.topic_interactions
    await ensure_topics(settings, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    lagger = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                              group_id=f"{settings.worker_app_id}-interactions",
                              enable_auto_commit=False)
    await producer.start()
    await lagger.start()
    ends: dict[TopicPartition, int] = {}
    rng = random.Random(seed)
    t0 = time.monotonic()

    async def produce() -> None:
        step = 0.1
        per_step = max(1, int(len(events) * step / produce_s))
        for j in range(0, len(events), per_step):
            futures = [await producer.send(topic, value, key=key.encode())
                       for key, value in events[j:j + per_step]]
            for meta in await asyncio.gather(*futures):
                tp = TopicPartition(meta.topic, meta.partition)
                ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
            await asyncio.sleep(max(0.0, t0 + (j // per_step + 1) * step - time.monotonic()))

    async def bursts() -> None:
        try:
            while (left := t0 + burst_s - time.monotonic()) > 0.3:
                frozen = min(rng.uniform(1.0, 4.0), left)
                os.kill(db.pid, signal.SIGSTOP)
                obs.freezes += 1
                await asyncio.sleep(frozen)
                db.resume()
                obs.frozen_s += frozen
                await asyncio.sleep(min(rng.uniform(0.5, 2.0), max(t0 + burst_s
                                                                   - time.monotonic(), 0)))
        finally:
            db.resume()
            obs.bursts_end = time.monotonic()

    async def monitor() -> None:
        last_lag = 0.0
        while True:
            now = time.monotonic()
            obs.cpu.append((now, proc.cpu_percent(None)))
            total, closed = _server_sockets(proc, db.port)
            obs.connections_max = max(obs.connections_max, total)
            obs.close_wait_max = max(obs.close_wait_max, closed)
            if now - last_lag >= 1.0 and ends:
                last_lag = now
                lag = await _committed_lag(lagger, dict(ends))
                obs.lag.append((now, lag))
                if obs.bursts_end and lag == 0 and obs.caught_up_at is None:
                    obs.caught_up_at = max(now, obs.bursts_end)  # 0: caught up during them
            if obs.bursts_end:
                quiet_for = now - max((t for t, c in obs.cpu if c >= IDLE_CPU_PERCENT),
                                      default=obs.bursts_end)
                if obs.caught_up_at is not None and quiet_for >= 3.0 \
                        and now - obs.caught_up_at >= 3.0:
                    return
                if now - obs.bursts_end > observe_cap_s:
                    return
            await asyncio.sleep(0.25)

    try:
        watcher = asyncio.create_task(monitor())
        await asyncio.gather(produce(), bursts())
        await watcher
    finally:
        db.resume()
        await producer.stop()
        await lagger.stop()
    return obs


def _oplog_check(client: pymongo.MongoClient[dict[str, Any]], ns: str) -> tuple[int, int]:
    """(redundant writes, stale overwrites) of user documents, read from the oplog.

    ``n_events`` grows by one per applied event, so it versions a user document: the
    same version written again is redundant work, and an older version written after a
    newer one undoes applied events.
    """
    newest: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    redundant = stale = 0
    for entry in client.local["oplog.rs"].find({"ns": ns, "op": {"$in": ["i", "u"]}},
                                               {"o._id": 1, "o.n_events": 1}):
        doc = entry.get("o") or {}
        if "n_events" not in doc:
            continue
        user, version = str(doc["_id"]), int(doc["n_events"])
        if (user, version) in seen:
            redundant += 1
        seen.add((user, version))
        if version < newest.get(user, -1):
            stale += 1
        newest[user] = max(newest.get(user, -1), version)
    return redundant, stale


def slow_db(world: DrillWorld, burst_s: float = 60.0, users: int = 10_000,
            events_per_user: int = 1, seed: int = 1, produce_s: float | None = 5.0,
            idle_bound_s: float = IDLE_TARGET_S) -> dict[str, Any]:
    """Run the drill in ``world`` (see the module docstring); one result dict.

    ``produce_s`` is how long producing takes (None: 80% of the bursts).
    Fails (:class:`~scripts.drill.DrillFailed`) if an event is lost or counted twice,
    the worker never catches up, or the database is still busy ``idle_bound_s`` after
    the last burst.
    """
    shared = world.settings
    # A SIGTERM (e.g. ``timeout``) must still run the clean-up below: it resumes and stops
    # the private server, which would otherwise be left frozen, and stops the worker.
    previous_term = signal.signal(signal.SIGTERM, _exit_on_term)
    stats = StatsdListener().start()
    db = PrivateMongo(world.workdir / "slow-db-mongo", world.workdir / "slow-db-mongo.log")
    client: pymongo.MongoClient[dict[str, Any]] | None = None
    try:
        db.start()
        world.settings = dataclasses.replace(shared, mongo_uri=db.uri, statsd_port=stats.port)
        world.apps = AppManager(world.settings)
        world.apps.up(["worker"])
        events = _events(users, events_per_user, seed)
        observe_cap_s = max(60.0, 2 * burst_s)
        produce_s = burst_s * 0.8 if produce_s is None else produce_s
        obs = asyncio.run(_run_load(world.settings, db, events, burst_s, produce_s, seed,
                                    observe_cap_s))
        t_end = obs.bursts_end
        busy = [t for t, c in obs.cpu if t >= t_end and c >= IDLE_CPU_PERCENT]
        idle_after = round((max(busy) + 0.25 - t_end) if busy else 0.0, 2)
        world.apps.down()  # read the final state without the worker
        client = pymongo.MongoClient(db.uri, serverSelectionTimeoutMS=5000)
        expected = Counter(key for key, _ in events)
        try:
            with pymongo.timeout(120):
                got = {str(d["_id"]): int(d.get("n_events", 0)) for d in
                       client[world.settings.mongo_db]["users"].find({}, {"n_events": 1})}
                redundant, stale = _oplog_check(client, f"{world.settings.mongo_db}.users")
        except pymongo.errors.PyMongoError as exc:
            raise DrillFailed(f"slow-db: the database did not answer the final reads "
                              f"within 120 s ({exc}); lag samples {obs.lag[-3:]}") from exc
        lost = sum(max(n - got.get(u, 0), 0) for u, n in expected.items())
        doubled = sum(max(got.get(u, 0) - n, 0) for u, n in expected.items())
        result = {
            "drill": "slow-db", "burst_s": burst_s, "freezes": obs.freezes,
            "frozen_s": round(obs.frozen_s, 1), "events": len(events), "users": users,
            "lost": lost, "double_counted": doubled,
            "max_lag": max((lag for _, lag in obs.lag), default=0),
            "caught_up_after_s": None if obs.caught_up_at is None
            else round(obs.caught_up_at - t_end, 2),
            "db_idle_after_s": idle_after,
            "db_cpu_peak_after_end": round(max((c for t, c in obs.cpu if t >= t_end),
                                               default=0.0), 1),
            "close_wait_max": obs.close_wait_max, "connections_max": obs.connections_max,
            "redundant_writes": redundant, "stale_overwrites": stale,
            "write_timeouts": int(stats.counter("worker.users.write.timeouts")),
            "write_retries": int(stats.counter("worker.users.write.retries")),
            "chunk_min": stats.gauge_min("worker.users.write.chunk_size"),
            # whole-batch retries of the pipeline (e.g. the unbounded read of user states)
            "batch_retries": int(stats.counter("worker.retries")),
        }
        if lost or doubled or obs.caught_up_at is None or idle_after > idle_bound_s:
            raise DrillFailed(f"slow-db: {result}")
        return result
    finally:
        if client is not None:
            client.close()
        world.apps.down()
        if world._mongo is not None:
            world._mongo.close()
            world._mongo = None
        db.stop()
        stats.stop()
        world.settings = shared
        world.apps = AppManager(shared)
        signal.signal(signal.SIGTERM, previous_term)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
