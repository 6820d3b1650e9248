"""One place for every environment variable the project reads.

Each process builds one :class:`Settings` with :meth:`Settings.from_env` at start-up
and passes it (or the clients built from it) down; nothing else reads ``os.environ``.
Defaults point at the local stack started by ``python -m scripts.stack up`` (all on
127.0.0.1); production overrides them with URLs to real Kafka, MongoDB and Redis.

Every field's env var is ``RECSYS_`` + the upper-cased field name; the README's
configuration table lists them all (a test keeps the two in step).

The services' own configuration dataclasses (``recommender_server.config.ApiConfig``,
``faiss_server.config.FaissConfig`` and ``IndexSpec``) are read by the same generic
reader, :func:`env_values`, under their own prefixes (``RECSYS_API_``, ``RECSYS_FAISS_``,
``RECSYS_FAISS_INDEX_``): each field declared with :func:`setting` (its doc is the
README's "meaning" column), coerced to the field's annotated type, with an error naming
the variable. Every variable has exactly one owning field (a test checks it).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ENV_PREFIX = "RECSYS_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def setting(doc: str, default: Any = dataclasses.MISSING, *,
            default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
            env: bool = True, shown: str | None = None) -> Any:
    """A documented dataclass field.

    ``doc`` is the README's "meaning"; ``env=False`` marks a field no variable sets (it is
    derived from another owner, e.g. :class:`Settings`); ``shown`` replaces the default
    in the README when the real one is derived at run time.
    """
    metadata = {"doc": doc, "env": env, "shown": shown}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _doc(text: str, default: Any) -> Any:
    return setting(text, default)


@dataclass(frozen=True)
class Settings:
    """Process configuration; immutable so it can be shared freely."""

    env_prefix: ClassVar[str] = ENV_PREFIX

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

    # --- HTTP services (their limits: ApiConfig, FaissConfig) ----------------------------
    faiss_keep_alive_s: float = _doc("Seconds the FAISS service keeps an idle connection "
                                     "open.", 5.0)

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
                             "(`hybrid`, `session`, `two_tower` or `gmf`; default: the product "
                             "default, `models.training.PRODUCT_MODEL`).", "hybrid")
    gc_gen0_threshold: int = _doc(
        "Allocations between two generation-0 garbage collections in the worker and the "
        "API (CPython's default is 700; `0` keeps it); see `common/gc_tuning.py`.", 50_000)
    worker_batch_size: int = _doc("Max interactions per micro-batch.", 5000)
    worker_batch_within_s: float = _doc("Max wait to fill a micro-batch (seconds).", 0.05)
    worker_history_size: int = _doc(
        "Recent events kept per user (the user's one history: the API filters out its "
        "items, the model's recent-history ring is loaded from it, so it must be at least "
        "the model's `history_size`).", 50)
    worker_cooc_export_interval_s: float = _doc(
        "Seconds between writes of the co-occurring items of the items whose partners "
        "changed to Redis (what `/v1/items/{id}/similar?source=cooc` and the sparse part "
        "of a hybrid query read; a click's own effect needs no export: the API reads the "
        "user's recent events fresh). With many users clicking every list changes every "
        "interval: at 2 s the export took 100-365 ms of each 2 s next to the pipeline.",
        5.0)
    worker_max_cached_users: int = _doc(
        "Users' states the worker keeps in memory between batches (least recently "
        "touched evicted first; an evicted user is reloaded from MongoDB on their next "
        "event): bounds the worker's memory, ~15-20 KB a session user.", 100_000)
    worker_cooc_export_max_items: int = _doc(
        "At most this many items' co-occurring lists are re-written per interval (the "
        "others wait for the next one): bounds how long one export holds the model.",
        20_000)
    rank_ann: int = _doc(
        "Ranking-stage candidates from the FAISS search (the API asks for them; the "
        "worker's ranker examples take as many: one setting so the two agree).", 100)
    rank_cooc: int = _doc(
        "Ranking-stage candidates from the co-occurrence of the user's recent items (the "
        "hybrid query's sparse part).", 30)
    rank_popular: int = _doc("Ranking-stage candidates from the popular list.", 20)
    worker_ranker: bool = _doc(
        "Train the ranking stage's ranker from the stream and publish it to the API "
        "(`streams/ranker_training.py`); off: the API keeps the ranker last published.",
        True)
    worker_ranker_examples_per_batch: int = _doc(
        "Users per applied batch whose candidates (computed before the batch is learned, "
        "as the API serves them) become ranker examples, labelled by what they chose.", 8)
    worker_ranker_retrain_s: float = _doc(
        "Seconds between ranker retrainings (in a thread, on the window of examples).",
        300.0)
    worker_ranker_min_examples: int = _doc(
        "Examples needed before the worker trains a ranker.", 2000)
    worker_ranker_window: int = _doc("Most recent examples a ranker is trained on.", 20_000)
    worker_cooc_served: int = _doc(
        "Co-occurring items stored per item (at most the model's `cooc_neighbours`): the "
        "largest `k` `?source=cooc` answers in full, and the partners the API's sparse "
        "part of a hybrid query reads (exactly the model's score only when it stores "
        "all `cooc_neighbours`).", 100)
    worker_commit_interval_s: float = _doc("Seconds between Kafka offset commits.", 0.5)
    worker_write_chunk: int = _doc("Max user documents per MongoDB write; halved after a "
                                   "timeout, grown back after successes.", 500)
    worker_write_timeout_s: float = _doc(
        "Limit of one user-document write or probe (client wait and server `maxTimeMS`); "
        "also how long the server must stay unchanged before an in-doubt write is re-sent.",
        2.0)
    worker_write_backoff_max_s: float = _doc("Longest jittered backoff before probing "
                                             "after a MongoDB write timeout.", 2.0)
    worker_min_flush_interval_s: float = _doc(
        "Least time between the starts of two MongoDB flushes of user documents (each "
        "writes every user touched since the last one, once): fewer, larger writes when "
        "many users click at once (5,000 users at 10,000 clicks/s: a document per ~10 events "
        "at 5 s); the commit and crash-replay lag grow by as much.", 5.0)
    worker_max_dirty_users: int = _doc(
        "Back-pressure: users whose newest document is not yet durable in MongoDB, beyond "
        "which applying new batches waits for the writes.", 50000)
    worker_max_write_lag_s: float = _doc(
        "Back-pressure: age of the oldest user document not yet durable in MongoDB, beyond "
        "which applying new batches waits for the writes (also bounds the replay after a "
        "crash).", 30.0)
    worker_hot_state_ttl_s: float = _doc(
        "Lifetime of a user's hot serving state in Redis (`user:{id}`), renewed by each "
        "applied batch; must exceed the write lag bound.", 3600.0)
    export_interval_s: float = _doc("Seconds between full item-vector exports to FAISS.", 30.0)
    checkpoint_interval_s: float = _doc("Seconds between model checkpoints.", 60.0)
    popularity_half_life_s: float = _doc("Half-life of popularity decay, in event time.",
                                         7 * 24 * 3600.0)
    max_event_bytes: int = _doc("Larger events go to the dead-letter topic.", 65536)
    dead_letter_max_payload_bytes: int = _doc(
        "Bytes of a rejected record's value kept in its dead letter (the rest is cut; "
        "headers give the original size and SHA-256).", 524288)

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
        return cls(**{**env_values(cls, env), **overrides})

    def to_env(self) -> dict[str, str]:
        """These settings as ``RECSYS_*`` variables, to configure a child process."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap servers as plain ``host:port,...`` for aiokafka clients."""
        return ",".join(part.split("://", 1)[-1] for part in self.kafka_url.split(","))


def env_name(field_name: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable that sets ``field_name``."""
    return prefix + field_name.upper()


def env_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a config dataclass that an environment variable sets."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("env", True)]


def env_values(cls: type, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` set in ``env`` (default ``os.environ``) under
    ``cls.env_prefix``, each coerced to its annotated type.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     env_prefix: ClassVar[str] = "DEMO_"
    ...     n: int = setting("a number", 1)
    ...     ratio: float | None = setting("a ratio", None)
    ...     roots: tuple[Path, ...] = setting("folders", ())
    >>> env_values(Demo, {"DEMO_N": "3", "DEMO_RATIO": "none", "DEMO_ROOTS": "/a,/b"})
    {'n': 3, 'ratio': None, 'roots': (PosixPath('/a'), PosixPath('/b'))}
    >>> env_values(Demo, {"DEMO_N": "three"})
    Traceback (most recent call last):
    ...
    ValueError: DEMO_N='three' is not a valid int
    """
    env = os.environ if env is None else env
    prefix: str = getattr(cls, "env_prefix", ENV_PREFIX)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in env_fields(cls):
        name = env_name(f.name, prefix)
        raw = env.get(name)
        if raw is not None:
            values[f.name] = _coerce(name, raw, hints[f.name])
    return values


def documented_fields(cls: type = Settings) -> list[tuple[str, str, Any]]:
    """``(env var, description, default)`` for every variable of ``cls``, for docs and
    tests (``KeyError`` for a field without a doc)."""
    prefix: str = getattr(cls, "env_prefix", ENV_PREFIX)
    out = []
    for f in env_fields(cls):
        default = f.metadata.get("shown") or (
            f.default if f.default is not dataclasses.MISSING
            else f.default_factory() if f.default_factory is not dataclasses.MISSING
            else "")
        out.append((env_name(f.name, prefix), f.metadata["doc"], default))
    return out


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _coerce(name: str, raw: str, kind: Any) -> Any:
    """``raw`` as ``kind`` (int, float, bool, str, Path, ``X | None``, ``tuple[X, ...]``)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if raw.strip().lower() in ("", "none") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, raw, inner)
    if typing.get_origin(kind) is tuple:
        return tuple(_coerce(name, part.strip(), args[0])
                     for part in raw.split(",") if part.strip())
    try:
        if kind is bool:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw).expanduser()
        if kind is str:
            return raw
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
    raise TypeError(f"{name}: fields of type {kind!r} cannot be set from the environment")
