"""The worker's own Python per event, without Kafka or MongoDB: one in-process pipeline.

    python -m scripts.bench_pipeline [--users 5000 --batches 10 --batch 5000 --model session]

Why: ``bench_stream`` measures the whole path on shared cores, where the producer, the
broker and SecantusDB (a Python process) take their share and runs vary by ±20%. This
one isolates what the worker's code costs: :class:`~streams.pipeline.InteractionPipeline`
over the real Redis (hot records, popularity), with MongoDB writes accepted at once (the
durable writer's copies are made, nothing is sent), on ``--batches`` batches of
``--batch`` synthetic clicks by ``--users`` users over the 1,682 MovieLens item ids,
after one warm-up batch. Prints one JSON line: events/s and the pipeline's time split
(``learn_s``: model learning and both queries; ``write_s``: Redis writes and the
durable hand-over; the rest of ``process_s`` is validation, de-duplication and state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence

import statsd

from common.clients import redis_client
from common.events import interaction_json
from common.gc_tuning import tune_gc
from common.settings import Settings
from common.stores import ItemCache, UserDoc
from devstack.stack import StackManager
from models.training import create_model
from streams.durable_users import DurableUsers
from streams.messages import RawMessage
from streams.pipeline import InteractionPipeline, ModelHolder

PREFIX = "bench-pipeline:"


class _Accepted:
    """A durable writer that accepts every document at once (MongoDB is not measured)."""

    async def write(self, docs: Sequence[UserDoc]) -> None:
        return None


class _NoUsers:
    """No stored users: every user starts new, as in ``bench_stream --users``."""

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserDoc]:
        return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--model", default="session")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    StackManager(settings).up()
    tune_gc(settings.gc_gen0_threshold)  # as the worker does
    r = redis_client(settings)
    metrics = statsd.StatsClient("127.0.0.1", 9)  # discard port
    model = create_model(args.model)
    items = [str(i) for i in range(1, 1683)]
    for i in items:
        model.upsert_item(i, {"genres": ["Drama"]})
    pipeline = InteractionPipeline(
        ModelHolder(model), _NoUsers(), ItemCache(r, PREFIX), metrics,  # type: ignore[arg-type]
        topic="interactions", dead_letter_topic="dead-letters",
        durable_users=DurableUsers(_Accepted(), metrics, max_dirty=10**7, max_lag_s=60.0))
    rng = random.Random(0)
    start_ms = int(time.time() * 1000) - 10**7

    def batch(first: int) -> list[RawMessage]:
        return [RawMessage(interaction_json(f"user{rng.randrange(args.users)}",
                                            rng.choice(items), "click", start_ms + first + j),
                           b"k", 0, first + j, time.time()) for j in range(args.batch)]

    async def run() -> float:
        await pipeline.process(batch(0))  # warm-up: kernels, new users
        for key in pipeline.totals:
            pipeline.totals[key] = 0
        messages = [batch((b + 1) * args.batch) for b in range(args.batches)]
        t0 = time.perf_counter()
        for m in messages:
            await pipeline.process(m)
        return time.perf_counter() - t0

    try:
        seconds = asyncio.run(run())
    finally:
        for key in r.scan_iter(match=f"{PREFIX}*"):
            r.delete(key)
        r.close()
    totals = pipeline.totals
    print(json.dumps({
        "model": args.model, "users": args.users, "batch": args.batch,
        "events": int(totals["events"]), "seconds": round(seconds, 3),
        "events_per_s": round(totals["events"] / seconds, 1),
        **{k: round(totals[k], 3) for k in ("learn_s", "write_s", "process_s")},
        "conditions": "in process, real Redis, MongoDB writes accepted at once, no Kafka"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
