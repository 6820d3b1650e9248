"""One place for every environment variable the project reads.

Each process builds one :class:`Settings` with :meth:`Settings.from_env` at start-up
and passes it (or the clients built from it) down; nothing else reads ``os.environ``.
Defaults point at the local stack started by ``python -m scripts.stack up`` (all on
127.0.0.1); production overrides them with URLs to real Kafka, MongoDB and Redis.

Every field's env var is ``RECSYS_`` + the upper-cased field name; the README's
configuration table lists them all (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "RECSYS_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _doc(text: str, default: Any) -> Any:
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Settings:
    """Process configuration; immutable so it can be shared freely."""

    # --- services -------------------------------------------------------------------
    kafka_url: str = _doc("Kafka bootstrap servers (`kafka://host:port[,host:port]`).",
                          "kafka://127.0.0.1:9092")
    mongo_uri: str = _doc("MongoDB connection URI (keep `journal=true`).",
                          "mongodb://127.0.0.1:27017/?journal=true")
    mongo_db: str = _doc("MongoDB database name.", "recsys")
    redis_url: str = _doc("Redis URL (item metadata, popular items).", "redis://127.0.0.1:6379/0")
    redis_prefix: str = _doc("Prefix of every Redis key this project writes.", "recsys:")
    faiss_url: str = _doc("Base URL of the FAISS service.", "http://127.0.0.1:8081")
    faiss_api_key: str = _doc("API key required by FAISS service write endpoints.",
                              "local-dev-key")
    api_port: int = _doc("Port of the recommender API.", 8080)
    faiss_port: int = _doc("Port of the FAISS service.", 8081)
    statsd_host: str = _doc("statsd host (UDP).", "127.0.0.1")
    statsd_port: int = _doc("statsd port (UDP).", 8125)
    statsd_prefix: str = _doc("Prefix of every metric name.", "recsys")

    # --- topics -----------------------------------------------------------------------
    topic_interactions: str = _doc("Topic of user interaction events.", "interactions")
    topic_items: str = _doc("Topic of item upsert/delete events.", "items")
    topic_dead_letter: str = _doc("Topic receiving invalid events with the reason.",
                                  "dead-letter")
    topic_partitions: int = _doc("Partitions when this project creates a topic.", 4)

    # --- streaming worker -------------------------------------------------------------
    worker_app_id: str = _doc("Faust app id (= Kafka consumer group of the worker).",
                              "recsys-worker")
    worker_model: str = _doc("Model the worker trains when no checkpoint exists "
                             "(`gmf` or `two_tower`).", "gmf")
    worker_batch_size: int = _doc("Max interactions per micro-batch.", 5000)
    worker_batch_within_s: float = _doc("Max wait to fill a micro-batch (seconds).", 0.05)
    worker_history_size: int = _doc("Recent items kept per user.", 50)
    worker_commit_interval_s: float = _doc("Seconds between Kafka offset commits.", 0.5)
    worker_write_chunk: int = _doc("Max user documents per MongoDB write; halved after a "
                                   "timeout, grown back after successes.", 500)
    worker_write_timeout_s: float = _doc(
        "Limit of one user-document write or probe (client wait and server `maxTimeMS`); "
        "also how long the server must stay unchanged before an in-doubt write is re-sent.",
        2.0)
    worker_write_backoff_max_s: float = _doc("Longest jittered backoff before probing "
                                             "after a MongoDB write timeout.", 2.0)
    export_interval_s: float = _doc("Seconds between full item-vector exports to FAISS.", 30.0)
    checkpoint_interval_s: float = _doc("Seconds between model checkpoints.", 60.0)
    popularity_half_life_s: float = _doc("Half-life of popularity decay, in event time.",
                                         7 * 24 * 3600.0)
    max_event_bytes: int = _doc("Larger events go to the dead-letter topic.", 65536)

    # --- local folders ----------------------------------------------------------------
    local_dir: Path = _doc("Root of local state: stack data, logs, PID files.",
                           PROJECT_ROOT / ".local")
    cache_dir: Path = _doc("Downloaded data sets (never committed).",
                           PROJECT_ROOT / ".local" / "cache")
    model_dir: Path = _doc("Checkpoints and exported vectors.",
                           PROJECT_ROOT / ".local" / "models")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``RECSYS_*`` variables, then explicit ``overrides``.

        >>> Settings.from_env({"RECSYS_API_PORT": "9000"}).api_port
        9000
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, raw, type(f.default))
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as ``RECSYS_*`` variables, to configure a child process."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap servers as plain ``host:port,...`` for aiokafka clients."""
        return ",".join(part.split("://", 1)[-1] for part in self.kafka_url.split(","))


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def documented_fields() -> list[tuple[str, str, Any]]:
    """``(env var, description, default)`` for every setting, for docs and tests."""
    return [(env_name(f.name), f.metadata["doc"], f.default) for f in dataclasses.fields(Settings)]


def _coerce(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if issubclass(kind, Path):
            return Path(raw).expanduser()
        return raw
    except ValueError as exc:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from exc
