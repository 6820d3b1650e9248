"""The operators' panels as Graphite targets: one list for PNG graphs and Grafana.

``$prefix`` stands for ``RECSYS_STATSD_PREFIX`` (a Grafana variable on the dashboard;
substituted by ``devstack.graphs``). Series paths follow :mod:`ops.metrics`: counters as
``.rate`` (per second), timers as ``.upper_99``/``.mean`` (ms per 1 s statsd flush),
gauges as-is. statsd drops idle series (``deleteIdleStats``), so counters are wrapped in
``transformNull(..., 0)`` and gauges sent every few seconds in ``keepLastValue``.
"""

from __future__ import annotations

from dataclasses import dataclass

P = "$prefix"


@dataclass(frozen=True)
class Panel:
    key: str  # file name of the PNG graph
    title: str
    unit: str  # Grafana unit id
    targets: tuple[str, ...]
    description: str = ""
    png: bool = False  # rendered by default by ``python -m scripts.graphs``


def _rate(path: str, alias: str) -> str:
    return f"alias(transformNull(stats.counters.{P}.{path}.rate, 0), '{alias}')"


def _gauge(path: str, alias: str) -> str:
    return f"alias(keepLastValue(stats.gauges.{P}.{path}, 10), '{alias}')"


def _timer(path: str, stat: str, alias: str) -> str:
    return f"alias(stats.timers.{P}.{path}.{stat}, '{alias}')"


PANELS: tuple[Panel, ...] = (
    Panel("throughput_worker", "Worker throughput (events/s)", "ops", (
        _rate("worker.events.interactions", "interactions consumed"),
        _rate("worker.events.applied", "interactions applied"),
        _rate("worker.events.duplicates", "duplicates skipped"),
        _rate("worker.events.items", "item events"),
    ), "Interaction and item events consumed by all workers, per second.", png=True),
    Panel("throughput_api", "API requests (req/s)", "reqps", (
        f"alias(transformNull(sumSeries(stats.counters.{P}.api.requests.*.*.*.rate), 0), "
        "'all requests')",
        f"aliasByNode(transformNull(stats.counters.{P}.api.requests."
        "{recommendations,similar,popular}.get.*.rate, 0), 5, 7)",
        f"alias(transformNull(sumSeries(stats.counters.{P}.api.requests.*.*.5*.rate), 0), "
        "'5xx')",
    ), "Requests per second by resource and status code.", png=True),
    Panel("consumer_lag", "Consumer lag (events behind, `interactions`)", "short", (
        f"alias(sumSeries(keepLastValue(stats.gauges.{P}.worker.consumer.lag.p*, 10)), "
        "'total')",
        f"aliasByNode(keepLastValue(stats.gauges.{P}.worker.consumer.lag.p*, 10), 6)",
    ), "High watermark minus processed offset per partition (sent every 5 s).", png=True),
    Panel("freshness", "Freshness: click → user vector (ms)", "ms", (
        _timer("worker.latency.click_to_vector_ms", "upper_99", "p99"),
        _timer("worker.latency.click_to_vector_ms", "mean", "mean"),
    ), "Kafka publish of a click until the user's vector is in MongoDB. Target p99 ≤ 1 s.",
        png=True),
    Panel("api_latency", "API latency (ms)", "ms", (
        f"aliasByNode(stats.timers.{P}.api.latency."
        "{recommendations,similar,popular}.get.upper_99, 5, 7)",
        f"aliasByNode(stats.timers.{P}.api.latency."
        "{recommendations,similar,popular}.get.mean, 5, 7)",
        _timer("faiss.latency.search.post", "upper_99", "faiss search upper_99"),
    ), "Sampled request latency per resource, p99 and mean. Target p99 ≤ 20 ms.", png=True),
    Panel("dead_letters", "Dead letters and errors (per s)", "ops", (
        _rate("worker.dead_letters", "dead letters"),
        _rate("worker.retries", "batch retries (dependency down)"),
        _rate("worker.faiss.errors", "FAISS upsert errors"),
        _rate("worker.export.errors", "export errors"),
        f"aliasByNode(transformNull(stats.counters.{P}.api.dependency_errors.*.rate, 0), 5)",
    ), "Events sent to the dead-letter topic; retries and dependency errors."),
    Panel("fallbacks", "API answers by source / fallback reason (per s)", "ops", (
        f"aliasByNode(transformNull(stats.counters.{P}.api.source.*.rate, 0), 5)",
        f"aliasByNode(transformNull(stats.counters.{P}.api.fallback.*.rate, 0), 5)",
    ), "Personalised versus popular answers, and why popular was used."),
    Panel("ranking", "Ranking stage: candidates per source, filter drops (per s); ranker (ms)",
          "ops", (
        f"aliasByNode(transformNull(stats.counters.{P}.api.rank.candidates.*.rate, 0), 6)",
        _rate("api.rank.learned", "ranked by the learned ranker"),
        _rate("api.rank.retrieval_order", "FAISS order (no ranker)"),
        _rate("api.filter.dropped", "candidates dropped by filters"),
        _timer("api.rank.latency", "upper_99", "rank upper_99 (ms)"),
        _rate("worker.ranker.examples", "worker: ranker examples"),
    ), "Candidates each source proposes, requests ranked by the learned ranker or in the "
       "FAISS order, filter drops, the ranking stage's p99 and the worker's examples."),
    Panel("model_size", "Model size", "short", (
        _gauge("worker.model.users", "users"),
        _gauge("worker.model.items", "items"),
        _gauge("faiss.index.size", "FAISS index size"),
    ), "Rows in the worker's embedding tables; vectors in the serving index."),
    Panel("batch_time", "Micro-batch learn / write time (ms)", "ms", (
        _timer("worker.batch.learn_ms", "mean", "learn mean"),
        _timer("worker.batch.learn_ms", "upper_99", "learn upper_99"),
        _timer("worker.batch.write_ms", "mean", "write mean"),
        _timer("worker.batch.write_ms", "upper_99", "write upper_99"),
        _gauge("worker.batch.size", "batch size (events)"),
    ), "Time per micro-batch spent learning (torch) and writing (MongoDB + Redis)."),
    Panel("export", "Export to FAISS / index versions", "short", (
        _timer("worker.export.duration_ms", "upper", "export duration (ms)"),
        _gauge("worker.export.items", "items exported"),
        f"alias(transformNull(stats.counters.{P}.faiss.index.swaps.count, 0), "
        "'index versions swapped in')",
        f"alias(transformNull(stats.counters.{P}.worker.checkpoints.count, 0), "
        "'checkpoints')",
    ), "Full exports (one new FAISS index version each, atomic swap) and checkpoints."),
)


def panel(key: str) -> Panel:
    for p in PANELS:
        if p.key == key:
            return p
    raise KeyError(f"no panel {key!r}; known: {[p.key for p in PANELS]}")
