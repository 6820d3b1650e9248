"""The end-to-end demo (``make demo``): data → broker → consumer, with figures.

Stage 1 of the product demo: fetch MovieLens 100k, replay its items and interactions
into the broker, read them back through a consumer group, and print per-topic counts
and throughput. Assumes the local stack is up (``make demo`` runs ``scripts.stack up``).
"""

from __future__ import annotations

import asyncio
import json
import sys

from common.settings import Settings
from datasets import movielens
from scripts.readback import produce_and_count
from scripts.replay import RUN_HEADER, Replayer, interaction_chunks


async def replay_and_read_back(settings: Settings) -> dict[str, object]:
    ds = movielens.load(settings.cache_dir)
    inter = ds.interactions.sorted_by_time()
    items = list(ds.items.values())
    stats_box = {}
    replayer = Replayer(settings)

    async def produce() -> dict[str, int]:
        stats = await replayer.run(items, interaction_chunks(inter), len(inter))
        stats_box["replay"] = stats
        return {settings.topic_interactions: stats.interactions, settings.topic_items: stats.items}

    topics = [settings.topic_interactions, settings.topic_items]
    got = await produce_and_count(settings, topics, "demo-readback", produce,
                                  run_header=(RUN_HEADER, replayer.run_id.encode()))
    replay = stats_box["replay"]
    return {
        "dataset": {"interactions": len(inter), "items": len(items),
                    "users": ds.interactions.n_users()},
        "read_back": dict(got.counts),
        "replay_events_per_s": round(replay.events_per_s, 1),
        "end_to_end_events_per_s": round(got.total / got.seconds, 1) if got.seconds else 0.0,
    }


def main() -> int:
    settings = Settings.from_env()
    print("== fetching MovieLens 100k and replaying it through the broker ==")
    summary = asyncio.run(replay_and_read_back(settings))
    counts = summary["read_back"]
    ds = summary["dataset"]
    n_inter = counts.get(settings.topic_interactions, 0)
    print(f"\n  topic {settings.topic_interactions!r}: {n_inter:,} "
          f"events read back (data set: {ds['interactions']:,})")
    print(f"  topic {settings.topic_items!r}: {counts.get(settings.topic_items, 0):,} "
          f"events read back (data set: {ds['items']:,})")
    print(f"  replay throughput: {summary['replay_events_per_s']:,.0f} events/s; "
          f"produce→consume: {summary['end_to_end_events_per_s']:,.0f} events/s")
    print(json.dumps(summary))
    ok = (counts.get(settings.topic_interactions) == ds["interactions"]
          and counts.get(settings.topic_items) == ds["items"])
    if not ok:
        print("demo FAILED: read-back counts differ from the data set", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
