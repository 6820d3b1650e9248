"""Benchmark the streaming worker end to end through the broker (one worker process).

    python -m scripts.bench_stream               # MovieLens: throughput, then 1,000 ev/s
    python -m scripts.bench_stream --quick       # 5,000-event freshness phase
    python -m scripts.bench_stream --users 5000  # 5,000 synthetic users clicking at once

Phase 1 (throughput): events replayed as fast as the producer can go; ``events_per_s`` =
events / (last event applied − first event sent), where "applied" means the batch's hot
user state (what the API serves from) and popularity are in Redis; ``durable_events_per_s``
uses the moment the worker had committed every offset instead, which it does only once
the user documents are in MongoDB (those writes run behind the pipeline, coalesced; the
commit interval, 0.5 s, is included). By default the events are the first 80% of
MovieLens 100k; with ``--users N`` they are ``--events`` clicks by N synthetic users, all
active at once, over the MovieLens catalogue and its item popularity
(:func:`datasets.synthetic.many_users_clicking`).
Phase 2 (freshness): more events at a fixed rate (``--rate``; MovieLens: the last 20% at
1,000/s; ``--users``: ``--fresh-events`` more clicks of the same users at 10,000/s).

Freshness is measured two ways, in both phases: the worker's ``latency.click_to_vector_ms``
(produce time → hot state written, every applied event; heard on its statsd packets, as
a dashboard would) and, from outside, :class:`devstack.freshness.FreshnessProbe`: new
users click at 50/s and their hot records are polled with the API's key and decoder
(click → the state the API serves from has changed). The JSON line carries ``users``,
the distinct users of phase 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from common.settings import Settings
from datasets import movielens
from datasets.synthetic import many_users_clicking
from datasets.types import Interactions
from devstack.drills.world import DrillWorld
from devstack.freshness import FreshnessProbe
from devstack.pidfiles import tail
from devstack.processes import wait_for
from devstack.replay import Replayer, interaction_chunks
from devstack.stack import StackManager
from devstack.statsd_listener import StatsdListener


def _quantiles(prefix: str, seconds: list[float]) -> dict[str, float | int]:
    lat = np.asarray(seconds, dtype=np.float64)
    if len(lat) == 0:
        return {f"{prefix}_samples": 0}
    return {f"{prefix}_samples": int(len(lat)),
            f"{prefix}_p50_s": round(float(np.percentile(lat, 50)), 4),
            f"{prefix}_p99_s": round(float(np.percentile(lat, 99)), 4),
            f"{prefix}_max_s": round(float(lat.max()), 4)}


async def _wait_committed(settings: Settings, timeout_s: float) -> float:
    """Wait until the worker has committed every record of `interactions` (it commits a
    batch only once its user documents are in MongoDB); return ``perf_counter()`` then.

    Offsets, not reads of MongoDB: a large ``$in`` read timed out on the local server
    while the worker was writing to it.
    """
    s = settings
    topic = s.topic_interactions
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap,
                                group_id=f"{s.worker_app_id}-interactions",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps)
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            committed = [await consumer.committed(tp) or 0 for tp in tps]
            if all(c >= ends[tp] for c, tp in zip(committed, tps, strict=True)):
                return time.perf_counter()
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the worker did not commit every record within {timeout_s} s")
    finally:
        await consumer.stop()


def run_phase(world: DrillWorld, stats: StatsdListener, probe: FreshnessProbe,
              inter: Interactions, rate: float | None, name: str) -> dict[str, float | int]:
    """Replay ``inter`` (at ``rate``, or full speed), wait until it is applied, then until
    it is durable; figures of that phase, freshness included."""
    settings = world.settings
    users = sorted(set(inter.users.tolist()))
    before = stats.counter("events.interactions")
    probes_before = probe.sent
    stats.take_timings("latency.click_to_vector_ms")
    probe.take()
    probe.resume()
    t0 = time.perf_counter()
    replay = asyncio.run(Replayer(settings, rate=rate, progress=False).run(
        [], interaction_chunks(inter, 10_000), len(inter)))
    probe.pause()
    wait_for(lambda: stats.counter("events.interactions") - before
             >= len(inter) + probe.sent - probes_before, 600,
             f"the worker to apply the {name} events", interval_s=0.05)
    t_applied = stats.last_time("events.interactions")
    t_durable = asyncio.run(_wait_committed(settings, 600))
    probe.wait_outstanding()
    worker_lat = np.array(stats.take_timings("latency.click_to_vector_ms")) / 1000.0
    return {"events": len(inter), "users": len(users),
            "rate": rate or 0, "producer_events_per_s": round(replay.events_per_s, 1),
            "events_per_s": round(len(inter) / (t_applied - t0), 1),
            "durable_events_per_s": round(len(inter) / (t_durable - t0), 1),
            **_quantiles("click_to_vector", worker_lat.tolist()),
            **_quantiles("click_to_api_state", probe.take())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="End-to-end streaming benchmark.")
    p.add_argument("--rate", type=float, default=None,
                   help="freshness phase events/s (default 1,000; 10,000 with --users)")
    p.add_argument("--quick", action="store_true", help="5,000-event freshness phase")
    p.add_argument("--users", type=int, default=0,
                   help="synthetic users clicking at once (0: MovieLens sessions)")
    p.add_argument("--events", type=int, default=200_000, help="phase 1 events with --users")
    p.add_argument("--fresh-events", type=int, default=100_000,
                   help="phase 2 events with --users")
    args = p.parse_args(argv)
    base = Settings.from_env()
    inter = movielens.load(base.cache_dir).interactions.sorted_by_time()
    if args.users:
        n_fresh = 5_000 if args.quick else args.fresh_events
        start = int(time.time() * 1000) - args.events - n_fresh
        load = many_users_clicking(inter, args.users, args.events, seed=0, start_ms=start)
        fresh_events = many_users_clicking(inter, args.users, n_fresh, seed=1,
                                           start_ms=start + args.events)
        rate = args.rate or 10_000.0
    else:
        split = int(len(inter) * 0.8)
        load = inter.take(slice(0, split))
        fresh_events = inter.take(slice(split, split + 5_000 if args.quick else None))
        rate = args.rate or 1_000.0
    StackManager(base).up()
    stats = StatsdListener().start()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        world = DrillWorld(base, Path(tmp), export_interval_s=3600.0, statsd_port=stats.port)
        probe = FreshnessProbe(world.settings, sorted(set(inter.items.tolist())))
        try:
            world.apps.up(["worker"])
            probe.start()
            probe.pause()
            print(f"phase 1: {len(load):,} events at full speed ...", file=sys.stderr)
            thr = run_phase(world, stats, probe, load, None, "throughput")
            print(f"  {thr}", file=sys.stderr)
            print(f"phase 2: {len(fresh_events):,} events at {rate:,.0f} events/s ...",
                  file=sys.stderr)
            fresh = run_phase(world, stats, probe, fresh_events, rate, "freshness")
            print(f"  {fresh}", file=sys.stderr)
        except Exception:
            print("worker log tail:\n" + tail(Path(tmp) / "logs" / "worker.log", 60),
                  file=sys.stderr)
            raise
        finally:
            probe.stop()
            stats.stop()
            world.apps.down(["worker"])  # its shutdown line has the time split
            totals = [line for line in tail(Path(tmp) / "logs" / "worker.log", 400).splitlines()
                      if "interactions totals" in line]
            if totals:
                print("worker " + totals[-1].split("] ", 1)[-1], file=sys.stderr)
            world.cleanup()
    print(json.dumps({
        "dataset": f"synthetic users over MovieLens items ({args.users})" if args.users
        else "movielens", "users": thr["users"],
        "events_per_s": thr["events_per_s"], "durable_events_per_s": thr["durable_events_per_s"],
        "throughput_events": thr["events"],
        "full_speed_click_to_api_state_p99_s": thr.get("click_to_api_state_p99_s"),
        "full_speed_click_to_api_state_samples": thr.get("click_to_api_state_samples"),
        "freshness_rate": fresh["rate"], "freshness_events": fresh["events"],
        "freshness_events_per_s": fresh["events_per_s"],
        "click_to_api_state_p50_s": fresh.get("click_to_api_state_p50_s"),
        "click_to_api_state_p99_s": fresh.get("click_to_api_state_p99_s"),
        "click_to_api_state_samples": fresh.get("click_to_api_state_samples"),
        "click_to_vector_p50_s": fresh.get("click_to_vector_p50_s"),
        "click_to_vector_p99_s": fresh.get("click_to_vector_p99_s"),
        "freshness_samples": fresh.get("click_to_vector_samples")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
