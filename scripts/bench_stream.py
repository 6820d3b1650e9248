"""Benchmark the streaming worker end to end through the broker (one worker process).

    python -m scripts.bench_stream            # MovieLens throughput, then freshness at 1,000 ev/s
    python -m scripts.bench_stream --quick    # 5,000-event freshness phase

Phase 1 (throughput): the first 80% of MovieLens 100k is replayed as fast as the
producer can go; ``events_per_s`` = events / (last event applied − first event sent),
where "applied" means user documents written to MongoDB and popularity to Redis.
Phase 2 (freshness): the last 20% as live clicks at a fixed rate (default 1,000/s); for
every batch the worker reports, per user, produce time → vector written to MongoDB
(``latency.click_to_vector_ms``). The local MongoDB stand-in writes ~500-1,800
documents/s, so freshness degrades once distinct users per second approach that.
The benchmark listens to the worker's real statsd packets, so it measures exactly
what an operator's dashboard shows.
Ends with a JSON line: ``events_per_s``, ``click_to_vector_p50_s``,
``click_to_vector_p99_s`` (plus the rates used).
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

from common.settings import Settings
from datasets import movielens
from datasets.types import Interactions
from devstack.drills.world import DrillWorld
from devstack.pidfiles import tail
from devstack.processes import wait_for
from devstack.replay import Replayer, interaction_chunks
from devstack.stack import StackManager
from devstack.statsd_listener import StatsdListener


def throughput_phase(settings: Settings, stats: StatsdListener,
                     inter: Interactions) -> dict[str, float]:
    before = stats.counter("events.interactions")
    t0 = time.perf_counter()
    replay = asyncio.run(Replayer(settings, progress=False).run(
        [], interaction_chunks(inter), len(inter)))
    wait_for(lambda: stats.counter("events.interactions") - before >= len(inter), 300,
             "the worker to apply every MovieLens event", interval_s=0.05)
    t_end = stats.last_time("events.interactions")
    seconds = t_end - t0
    return {"events": len(inter), "seconds": round(seconds, 3),
            "events_per_s": round(len(inter) / seconds, 1),
            "producer_events_per_s": round(replay.events_per_s, 1)}


def freshness_phase(settings: Settings, stats: StatsdListener, inter: Interactions,
                    rate: float) -> dict[str, float]:
    stats.take_timings("latency.click_to_vector_ms")
    before = stats.counter("events.interactions")
    asyncio.run(Replayer(settings, rate=rate, progress=False).run(
        [], interaction_chunks(inter, 1_000), len(inter)))
    wait_for(lambda: stats.counter("events.interactions") - before >= len(inter), 120,
             "the worker to apply the freshness events", interval_s=0.05)
    time.sleep(0.5)
    lat = np.array(stats.take_timings("latency.click_to_vector_ms")) / 1000.0
    if len(lat) == 0:
        raise RuntimeError("the worker reported no click→vector latencies")
    return {"rate": rate, "events": len(inter), "samples": int(len(lat)),
            "click_to_vector_p50_s": round(float(np.percentile(lat, 50)), 4),
            "click_to_vector_p99_s": round(float(np.percentile(lat, 99)), 4),
            "click_to_vector_max_s": round(float(lat.max()), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="End-to-end streaming benchmark.")
    p.add_argument("--rate", type=float, default=1_000.0, help="freshness phase events/s")
    p.add_argument("--quick", action="store_true", help="5,000-event freshness phase")
    args = p.parse_args(argv)
    inter = movielens.load(Settings.from_env().cache_dir).interactions.sorted_by_time()
    split = int(len(inter) * 0.8)
    fresh_events = inter.take(slice(split, split + 5_000 if args.quick else None))
    StackManager(Settings.from_env()).up()
    stats = StatsdListener().start()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        world = DrillWorld(Settings.from_env(), Path(tmp), export_interval_s=3600.0,
                           statsd_port=stats.port)
        settings = world.settings
        try:
            world.apps.up(["worker"])
            print("phase 1: first 80% of MovieLens at full speed ...", file=sys.stderr)
            thr = throughput_phase(settings, stats, inter.take(slice(0, split)))
            print(f"  {thr}", file=sys.stderr)
            print(f"phase 2: the rest at {args.rate:,.0f} events/s ...", file=sys.stderr)
            fresh = freshness_phase(settings, stats, fresh_events, args.rate)
            print(f"  {fresh}", file=sys.stderr)
        except Exception:
            print("worker log tail:\n" + tail(Path(tmp) / "logs" / "worker.log", 60),
                  file=sys.stderr)
            raise
        finally:
            stats.stop()
            world.apps.down(["worker"])  # its shutdown line has the time split
            totals = [line for line in tail(Path(tmp) / "logs" / "worker.log", 400).splitlines()
                      if "interactions totals" in line]
            if totals:
                print("worker " + totals[-1].split("] ", 1)[-1], file=sys.stderr)
            world.cleanup()
    print(json.dumps({"events_per_s": thr["events_per_s"],
                      "click_to_vector_p50_s": fresh["click_to_vector_p50_s"],
                      "click_to_vector_p99_s": fresh["click_to_vector_p99_s"],
                      "throughput_events": thr["events"], "freshness_rate": fresh["rate"],
                      "freshness_samples": fresh["samples"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
