"""Small Kafka helpers shared by the replay script, the worker and tests.

Topics are created explicitly (auto-creation differs between brokers and hides typos).
Client settings keep group joins fast on the local broker; they are ordinary Kafka
settings, valid against Apache Kafka too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from common.settings import Settings

log = logging.getLogger(__name__)

# Plain aiokafka consumers: short session so a group join does not wait ~half a minute.
CONSUMER_GROUP_OPTIONS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


async def delete_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    """Delete the topics that exist; return their names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in dict.fromkeys(names) if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def recreate_topics(settings: Settings, names: Iterable[str],
                          partitions: int | None = None) -> None:
    """Delete the topics (when present) and create them empty: a clean slate for demos."""
    names = list(names)
    await delete_topics(settings, names)
    await ensure_topics(settings, names, partitions)


async def ensure_topics(settings: Settings, names: Iterable[str],
                        partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    wanted = list(dict.fromkeys(names))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if not missing:
            return []
        n_part = partitions or settings.topic_partitions
        try:
            await admin.create_topics(
                [NewTopic(name=n, num_partitions=n_part, replication_factor=1) for n in missing]
            )
        except TopicAlreadyExistsError:  # created concurrently by another process
            pass
        log.info("created topics %s with %d partitions", missing, n_part)
        return missing
    finally:
        await admin.close()
