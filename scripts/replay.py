"""Replay a data set into Kafka as live events: items first, then interactions in time order.

    python -m scripts.replay                          # MovieLens 100k, as fast as possible
    python -m scripts.replay --rate 2000              # throttled to 2,000 events/s
    python -m scripts.replay --from-fraction 0.8      # only the last 20% of interactions
    python -m scripts.replay --dataset synthetic --users 100000 --items 20000 --events 1000000

Interactions are keyed by user id (so one user's events stay ordered on one partition),
items by item id. Topics are created explicitly. Ends with a JSON line:
``{"events": ..., "seconds": ..., "events_per_s": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from common.events import interaction_json, item_json
from common.kafka import ensure_topics
from common.settings import Settings
from datasets import movielens
from datasets.synthetic import SyntheticConfig, SyntheticGenerator
from datasets.types import Interactions, Item

log = logging.getLogger("replay")

RUN_HEADER = "replay-run"


@dataclass
class ReplayStats:
    interactions: int
    items: int
    seconds: float

    @property
    def events(self) -> int:
        return self.interactions + self.items

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> str:
        return json.dumps({"events": self.events, "interactions": self.interactions,
                           "items": self.items, "seconds": round(self.seconds, 3),
                           "events_per_s": round(self.events_per_s, 1)})


def interaction_chunks(inter: Interactions, chunk: int = 10_000) -> Iterator[Interactions]:
    for start in range(0, len(inter), chunk):
        yield inter.take(slice(start, start + chunk))


class Replayer:
    """Publishes items and interactions; one producer, bounded in-flight sends."""

    def __init__(self, settings: Settings, rate: float | None = None,
                 progress: bool = True, run_id: str | None = None) -> None:
        self.settings = settings
        self.rate = rate
        self.progress = progress
        # Every record carries a `replay-run` header so a reader can count exactly this run.
        self.run_id = run_id or uuid.uuid4().hex
        self._headers = [(RUN_HEADER, self.run_id.encode())]

    async def run(self, items: list[Item], chunks: Iterator[Interactions],
                  total_interactions: int, ts_ms: int | None = None) -> ReplayStats:
        s = self.settings
        await ensure_topics(s, [s.topic_interactions, s.topic_items, s.topic_dead_letter])
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all",
                                    linger_ms=5, max_batch_size=512 * 1024,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        sent = 0
        bar = tqdm(total=len(items) + total_interactions, unit="ev", disable=not self.progress,
                   desc="replay", mininterval=0.5)
        t0 = time.perf_counter()
        pending: list[asyncio.Future[object]] = []
        try:
            item_ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
            for item in items:
                pending.append(await producer.send(
                    s.topic_items, item_json(item.item_id, "upsert", item.attributes, item_ts),
                    key=item.item_id.encode(), headers=self._headers))
                sent += 1
                await self._pace(sent, t0)
            bar.update(len(items))
            n_inter = 0
            for ch in chunks:
                events = ch.event_types()
                has_value = ch.events is None  # ratings carry their value
                for u, i, e, r, t in zip(ch.users.tolist(), ch.items.tolist(), events.tolist(),
                                         ch.ratings.tolist(), ch.ts_ms.tolist(), strict=True):
                    pending.append(await producer.send(
                        s.topic_interactions,
                        interaction_json(u, i, e, t, r if has_value else None),
                        key=u.encode(), headers=self._headers))
                    sent += 1
                    await self._pace(sent, t0)
                n_inter += len(ch)
                bar.update(len(ch))
                if len(pending) > 50_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            await producer.flush()
        finally:
            bar.close()
            await producer.stop()
        return ReplayStats(n_inter, len(items), time.perf_counter() - t0)

    async def _pace(self, sent: int, t0: float) -> None:
        if self.rate:
            ahead = sent / self.rate - (time.perf_counter() - t0)
            if ahead > 0.005:
                await asyncio.sleep(ahead)


def load_source(args: argparse.Namespace, settings: Settings) -> tuple[list[Item], Interactions]:
    """Items and time-ordered interactions for the chosen data set and slice."""
    if args.dataset == "movielens":
        ds = movielens.load(settings.cache_dir)
        items, inter = list(ds.items.values()), ds.interactions.sorted_by_time()
    else:
        gen = SyntheticGenerator(SyntheticConfig(n_users=args.users, n_items=args.items,
                                                 seed=args.seed, drift=args.drift))
        items, inter = list(gen.items().values()), gen.interactions(args.events)
    n = len(inter)
    lo, hi = int(n * args.from_fraction), int(n * args.until_fraction)
    inter = inter.take(slice(lo, hi))
    if args.limit is not None:
        inter = inter.take(slice(0, args.limit))
    if args.no_items:
        items = []
    return items, inter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Replay a data set into Kafka as live events.")
    p.add_argument("--dataset", choices=["movielens", "synthetic"], default="movielens")
    p.add_argument("--rate", type=float, default=None, help="events/s (default: max)")
    p.add_argument("--limit", type=int, default=None, help="at most this many interactions")
    p.add_argument("--from-fraction", type=float, default=0.0,
                   help="skip the first fraction of interactions (time order)")
    p.add_argument("--until-fraction", type=float, default=1.0,
                   help="stop at this fraction of interactions (time order)")
    p.add_argument("--no-items", action="store_true", help="do not publish the item catalogue")
    p.add_argument("--users", type=int, default=10_000, help="synthetic: users")
    p.add_argument("--items", type=int, default=5_000, help="synthetic: items")
    p.add_argument("--events", type=int, default=100_000, help="synthetic: interactions")
    p.add_argument("--drift", type=float, default=0.0, help="synthetic: taste drift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not 0.0 <= args.from_fraction <= args.until_fraction <= 1.0:
        p.error("need 0 <= --from-fraction <= --until-fraction <= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    items, inter = load_source(args, settings)
    stats = asyncio.run(Replayer(settings, rate=args.rate, progress=not args.quiet).run(
        items, interaction_chunks(inter), len(inter)))
    print(f"replayed {stats.interactions:,} interactions and {stats.items:,} items "
          f"in {stats.seconds:.2f}s: {stats.events_per_s:,.0f} events/s", file=sys.stderr)
    print(stats.as_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
