"""Replay a data set into Kafka as live events: items first, then interactions in time order.

    python -m scripts.replay                          # MovieLens 100k, as fast as possible
    python -m scripts.replay --rate 2000              # throttled to 2,000 events/s
    python -m scripts.replay --from-fraction 0.8      # only the last 20% of interactions
    python -m scripts.replay --dataset synthetic --users 100000 --items 20000 --events 1000000

Interactions are keyed by user id (so one user's events stay ordered on one partition),
items by item id. Topics are created explicitly (:class:`devstack.replay.Replayer` does
the work). Ends with a JSON line: ``{"events": ..., "seconds": ..., "events_per_s": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from common.settings import Settings
from datasets import movielens
from datasets.synthetic import SyntheticConfig, SyntheticGenerator
from datasets.types import Interactions, Item
from devstack.replay import Replayer, interaction_chunks


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
