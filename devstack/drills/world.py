"""The world a drill runs in: its own settings, apps and clean-up; and its failure type.

Kept apart from :mod:`devstack.drills.system` (the registry) so that drill modules
(:mod:`devstack.drills.stream`, ...) import it without importing the registry.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.clients import mongo_client, redis_client
from common.kafka import delete_topics
from common.settings import Settings
from datasets.types import Interactions, Item
from devstack.apps import AppManager
from devstack.processes import free_port
from devstack.replay import Replayer, interaction_chunks


class DrillFailed(AssertionError):
    """A drill's expectation did not hold; the message says which and by how much."""


@dataclass
class DrillWorld:
    """Namespaced settings and the apps of one drill run."""

    base: Settings
    workdir: Path
    export_interval_s: float = 2.0
    statsd_port: int | None = None  # default: a free port nobody listens on
    settings: Settings = field(init=False)
    apps: AppManager = field(init=False)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        fport, aport = free_port(), free_port()
        self.settings = Settings.from_env(
            kafka_url=self.base.kafka_url, mongo_uri=self.base.mongo_uri,
            redis_url=self.base.redis_url, mongo_db=f"drill_{tag}",
            redis_prefix=f"drill-{tag}:", topic_interactions=f"drill-{tag}-interactions",
            topic_items=f"drill-{tag}-items", topic_dead_letter=f"drill-{tag}-dlq",
            worker_app_id=f"drill-{tag}", faiss_port=fport,
            faiss_url=f"http://127.0.0.1:{fport}", api_port=aport,
            local_dir=self.workdir, model_dir=self.workdir / "models",
            export_interval_s=self.export_interval_s, checkpoint_interval_s=5.0,
            statsd_port=self.statsd_port or free_port())
        self.apps = AppManager(self.settings)
        self._mongo: Any = None

    @property
    def mongo(self) -> Any:
        """A client kept for the world's lifetime (polling loops reuse it)."""
        if self._mongo is None:
            self._mongo = mongo_client(self.settings)
        return self._mongo

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def users(self) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d for d in self.mongo[self.settings.mongo_db]["users"].find()}

    def total_events(self) -> int:
        """Sum of ``n_events`` over every user, computed by the database (polling loops
        call it often; fetching every document made each poll grow with the users)."""
        rows = list(self.mongo[self.settings.mongo_db]["users"].aggregate(
            [{"$group": {"_id": None, "n": {"$sum": "$n_events"}}}]))
        return int(rows[0]["n"]) if rows else 0

    def replay(self, inter: Interactions, rate: float | None = None) -> None:
        """Replay ``inter``, preceded by upserts of the items it names (the catalogue:
        only items that had an upsert are ever served)."""
        from datasets import movielens

        known = movielens.load(self.settings.cache_dir).items
        items = [known.get(i) or Item(i, i) for i in sorted(set(inter.items.tolist()))]
        asyncio.run(Replayer(self.settings, rate=rate, progress=False).run(
            items, interaction_chunks(inter, 1_000), len(inter)))

    def cleanup(self) -> None:
        self.apps.down()
        self.mongo.drop_database(self.settings.mongo_db)
        self.mongo.close()
        self._mongo = None
        r = redis_client(self.settings)
        keys = list(r.scan_iter(match=f"{self.settings.redis_prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
        s = self.settings
        asyncio.run(delete_topics(s, [s.topic_interactions, s.topic_items,
                                      s.topic_dead_letter]))


