"""Replay publishes a data set completely, keyed, and in per-key time order."""

import asyncio
import json
from collections import defaultdict

import numpy as np
import pytest

from common.settings import Settings
from datasets import movielens
from devstack.readback import produce_and_count
from devstack.replay import RUN_HEADER, Replayer, interaction_chunks

pytestmark = pytest.mark.integration


def test_replay_10k_read_back_complete_and_in_per_key_order(stack: Settings, run_id: str) -> None:
    ds = movielens.load(stack.cache_dir)
    inter = ds.interactions.sorted_by_time().take(slice(0, 10_000))
    items = list(ds.items.values())[:100]
    replayer = Replayer(stack, progress=False)

    async def produce() -> dict[str, int]:
        stats = await replayer.run(items, interaction_chunks(inter, 1_000), len(inter))
        assert stats.interactions == 10_000 and stats.items == 100
        return {stack.topic_interactions: stats.interactions, stack.topic_items: stats.items}

    got = asyncio.run(produce_and_count(
        stack, [stack.topic_interactions, stack.topic_items], f"test-{run_id}-replay", produce,
        keep_records=True, run_header=(RUN_HEADER, replayer.run_id.encode())))
    assert got.counts[stack.topic_interactions] == 10_000
    assert got.counts[stack.topic_items] == 100

    by_user: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for rec in got.records:
        if rec.topic != stack.topic_interactions:
            continue
        event = json.loads(rec.value)
        assert rec.key.decode() == event["user_id"]  # keyed by user
        assert set(event) == {"user_id", "item_id", "event", "value", "ts"}
        by_user[event["user_id"]].append((rec.partition, event["ts"], event["item_id"]))
    expected: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for u, i, t in zip(inter.users.tolist(), inter.items.tolist(), inter.ts_ms.tolist(),
                       strict=True):
        expected[u].append((t, i))
    assert set(by_user) == set(expected)
    for user, seen in by_user.items():
        assert len({p for p, _, _ in seen}) == 1  # one partition per user
        assert [(t, i) for _, t, i in seen] == expected[user]  # same order as the source
    assert np.isin([e["item_id"] for e in map(json.loads, (r.value for r in got.records
                    if r.topic == stack.topic_items))], [it.item_id for it in items]).all()
