"""The catalogue of every statsd metric the project sends, and a scanner that checks it.

One list, :data:`METRICS`, says what each metric is; ``ops/METRICS.md`` is rendered from
it (``python -m ops.metrics > ops/METRICS.md``), and the Grafana dashboard and PNG graphs
may only reference names in it. :func:`scan_sources` reads the metric names the code
actually sends (string literals and f-strings passed to ``incr``/``gauge``/``timing`` and
the in-process aggregators of the API), so ``tests/test_ops_dashboard.py`` fails when
the code and this catalogue drift apart in either direction.

Names as stored in Graphite (statsd daemon with ``legacyNamespace: false``)::

    counter  stats.counters.<prefix>.<component>.<name>.rate|count   (rate = per second)
    timer    stats.timers.<prefix>.<component>.<name>.mean|upper_99|count_ps|...
    gauge    stats.gauges.<prefix>.<component>.<name>

``<prefix>`` is ``RECSYS_STATSD_PREFIX`` (``recsys``); ``<component>`` is the suffix each
process gives its statsd client (``worker``, ``api``, ``faiss``).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.settings import PROJECT_ROOT

COUNTER, TIMER, GAUGE = "counter", "timer", "gauge"

#: statsd (0.9) Graphite leaves per type; timers with ``percentThreshold: [90, 99]``.
TIMER_STATS = frozenset(
    {"mean", "upper", "lower", "count", "count_ps", "sum", "sum_squares", "std", "median"}
    | {f"{stat}_{p}" for p in (90, 99) for stat in ("mean", "upper", "sum", "sum_squares")}
)
COUNTER_STATS = frozenset({"rate", "count"})
GRAPHITE_ROOT = {COUNTER: "stats.counters", TIMER: "stats.timers", GAUGE: "stats.gauges"}

#: Files that send metrics, and the statsd client suffix (component) they send under.
SOURCES: dict[str, str] = {
    "streams/pipeline.py": "worker",
    "streams/app.py": "worker",
    "streams/runtime.py": "worker",
    "streams/dead_letters.py": "worker",
    "streams/user_writes.py": "worker",
    "streams/durable_users.py": "worker",
    "streams/ranker_training.py": "worker",
    "recommender_server/metrics.py": "api",
    "recommender_server/recommend.py": "api",
    "common/http_metrics.py": "faiss",  # the FAISS service's middleware (the API batches)
    "faiss_server/app.py": "faiss",
}


@dataclass(frozen=True)
class Metric:
    """One metric; ``<placeholders>`` stand for one dot-free segment each."""

    component: str
    name: str
    type: str
    meaning: str
    sources: tuple[str, ...]

    def full_name(self, prefix: str = "recsys") -> str:
        """The name statsd receives, e.g. ``recsys.worker.events.interactions``."""
        return f"{prefix}.{self.component}.{self.name}"

    def regex(self) -> re.Pattern[str]:
        parts = re.split(r"(<[^>]+>)", self.name)
        body = "".join("[^.]+" if p.startswith("<") else re.escape(p) for p in parts if p)
        return re.compile(body)

    def sample(self) -> str:
        """The name with each ``<placeholder>`` replaced by its own word."""
        return re.sub(r"<([^>]+)>", r"\1", self.name)


_W = ("streams/pipeline.py",)
_UW = ("streams/user_writes.py",)
_DU = ("streams/durable_users.py",)
_API = ("recommender_server/recommend.py",)

METRICS: tuple[Metric, ...] = (
    # --- streaming worker -------------------------------------------------------------
    Metric("worker", "events.interactions", COUNTER,
           "Interaction events consumed (valid or not), per micro-batch.", _W),
    Metric("worker", "events.applied", COUNTER,
           "Interactions applied to user state and the model (not duplicates).", _W),
    Metric("worker", "events.duplicates", COUNTER,
           "Redelivered or producer-duplicated interactions skipped (idempotence).", _W),
    Metric("worker", "events.items", COUNTER, "Item events (upsert/delete) consumed.", _W),
    Metric("worker", "ranker.examples", COUNTER,
           "Ranker examples kept (a sampled user's candidates before a batch, labelled by "
           "what they chose in it).", _W),
    Metric("worker", "ranker.trained", COUNTER,
           "Rankers trained and published (better than retrieval on held-out examples "
           "beyond chance).", ("streams/ranker_training.py",)),
    Metric("worker", "ranker.rejected", COUNTER,
           "Rankers trained but not published (not better than retrieval on held-out "
           "examples beyond chance).", ("streams/ranker_training.py",)),
    Metric("worker", "dead_letters", COUNTER,
           "Events sent to the dead-letter topic (invalid, poison or conflicting "
           "duplicates); counted once, by the sink.", ("streams/dead_letters.py",)),
    Metric("worker", "dead_letters.truncated", COUNTER,
           "Dead letters whose payload was cut to RECSYS_DEAD_LETTER_MAX_PAYLOAD_BYTES.",
           ("streams/dead_letters.py",)),
    Metric("worker", "items.stale", COUNTER,
           "Item events skipped because a newer one (event time) was applied.", _W),
    Metric("worker", "epochs.regressions", GAUGE,
           "Partitions whose log was found replaced (offsets went back) since start.", _W),
    Metric("worker", "retries", COUNTER,
           "Batch retries while MongoDB/Redis/FAISS was unavailable.", _W),
    Metric("worker", "faiss.errors", COUNTER,
           "Item-vector upserts the FAISS service refused or missed.", _W),
    Metric("worker", "batch.size", GAUGE, "Events in the last micro-batch.", _W),
    Metric("worker", "batch.learn_ms", TIMER,
           "Time to learn a micro-batch and compute its user vectors.", _W),
    Metric("worker", "batch.write_ms", TIMER,
           "Time to write a batch's popularity and hot user state (Redis) and hand its "
           "user documents to the durable writer (includes any back-pressure wait).", _W),
    Metric("worker", "model.loss", GAUGE, "Training loss of the last micro-batch.", _W),
    Metric("worker", "model.users", GAUGE, "Users in the worker's model.", _W),
    Metric("worker", "model.items", GAUGE, "Items in the worker's model.", _W),
    Metric("worker", "users.cached", GAUGE,
           "Users' states held in memory between batches (at most "
           "`RECSYS_WORKER_MAX_CACHED_USERS`; the least recently touched are evicted).", _W),
    Metric("worker", "model.new_users", COUNTER,
           "Users added to the model's tables (table growth).", _W),
    Metric("worker", "model.new_items", COUNTER,
           "Items added to the model's tables (table growth).", _W),
    Metric("worker", "model.history_reloads", COUNTER,
           "Users whose model recent-history ring was reloaded from their stored history "
           "(it reflected another version: first touch after a restart, a retried batch, "
           "a new user). Steady growth outside those means the two are drifting.", _W),
    Metric("worker", "latency.click_to_vector_ms", TIMER,
           "Freshness: click published on Kafka → the user's new query vector and history "
           "in the hot state the API reads (Redis), one sample per applied event.", _W),
    Metric("worker", "users.durable.written", COUNTER,
           "User documents written to MongoDB behind the pipeline (coalesced: one per "
           "user per flush, however many batches touched it).", _DU),
    Metric("worker", "users.durable.flush_ms", TIMER,
           "One flush of the waiting user documents to MongoDB.", _DU),
    Metric("worker", "users.durable.lag_ms", TIMER,
           "Age of the oldest document of a flush when it became durable (how far MongoDB "
           "and the committed offsets trail the applied events).", _DU),
    Metric("worker", "users.durable.pending", GAUGE,
           "Users waiting for their durable write after a flush.", _DU),
    Metric("worker", "users.durable.backpressure", COUNTER,
           "Batches that waited for durable writes (`RECSYS_WORKER_MAX_DIRTY_USERS` or "
           "`RECSYS_WORKER_MAX_WRITE_LAG_S` exceeded).", _DU),
    Metric("worker", "users.durable.backpressure_ms", TIMER,
           "How long such a batch waited.", _DU),
    Metric("worker", "users.write.timeouts", COUNTER,
           "User-document writes to MongoDB that timed out or lost their connection "
           "(outcome in doubt: probed before anything is sent again).", _UW),
    Metric("worker", "users.write.probes", COUNTER,
           "Bounded reads of in-doubt documents' versions after a write timeout.", _UW),
    Metric("worker", "users.write.retries", COUNTER,
           "In-doubt writes re-sent (only their missing documents) once the server "
           "showed the abandoned write could not land any more.", _UW),
    Metric("worker", "users.write.resent", COUNTER,
           "User documents re-sent after an in-doubt write.", _UW),
    Metric("worker", "users.write.chunk_size", GAUGE,
           "Max user documents per MongoDB write: halved on a timeout, grown back on "
           "success (`RECSYS_WORKER_WRITE_CHUNK` at most).", _UW),
    Metric("worker", "users.write.in_doubt_ms", TIMER,
           "From a write timeout until its documents were known landed or re-sent.", _UW),
    Metric("worker", "checkpoints", COUNTER, "Model checkpoints written.",
           ("streams/runtime.py",)),
    Metric("worker", "export.duration_ms", TIMER,
           "Full export of item vectors to the FAISS service (new index version).",
           ("streams/runtime.py",)),
    Metric("worker", "export.items", GAUGE, "Item vectors in the last full export.",
           ("streams/runtime.py",)),
    Metric("worker", "export.errors", COUNTER, "Failed periodic exports (retried).",
           ("streams/app.py",)),
    Metric("worker", "export.cooc_ms", TIMER,
           "One write of the co-occurring items of the items whose partners changed "
           "(`RedisKeys.cooc`, every `RECSYS_WORKER_COOC_EXPORT_INTERVAL_S`).",
           ("streams/runtime.py",)),
    Metric("worker", "export.cooc_items", COUNTER,
           "Items whose co-occurring-item lists were re-written.", ("streams/runtime.py",)),
    Metric("worker", "consumer.lag.p<partition>", GAUGE,
           "Consumer lag of the `interactions` partition (high watermark − processed), "
           "every 5 s, for the partitions this worker owns.", ("streams/app.py",)),
    # --- recommender API ----------------------------------------------------------------
    Metric("api", "requests.<resource>.<method>.<status>", COUNTER,
           "HTTP requests by resource (`recommendations`, `similar`, `popular`, `health`, "
           "`ready`, `openapi`; `unrouted`), method and status code.",
           ("recommender_server/metrics.py",)),
    Metric("api", "latency.<resource>.<method>", TIMER,
           "Request latency in ms (sampled at `metrics_timing_rate`, rate-tagged).",
           ("recommender_server/metrics.py",)),
    Metric("api", "fallback.<reason>", COUNTER,
           "Answers served from popular items, by reason (`unknown_user`, `no_vector`, "
           "`mongo_unavailable`, `faiss_unavailable`, `index_not_ready`, `bad_query`, "
           "`no_candidates`, `unknown_item`, `redis_unavailable`).", _API),
    Metric("api", "similar.<source>", COUNTER,
           "Similar-item answers by `source` asked (`embedding`, `cooc`).", _API),
    Metric("api", "source.<source>", COUNTER,
           "Answers by source (`personalized`, `popular`).", _API),
    Metric("api", "dependency_errors.<dependency>", COUNTER,
           "Errors talking to `mongo`, `redis` or `faiss`.", _API),
    Metric("api", "user_state.hot", COUNTER,
           "User states served from the worker's hot state in Redis (newer than or as new "
           "as the MongoDB document).", _API),
    Metric("api", "user_state.stored", COUNTER,
           "User states served from the MongoDB document (no hot state, an older one, or "
           "Redis unavailable).", _API),
    Metric("api", "user_state.undecodable", COUNTER,
           "Hot records that did not decode (written by an older worker version, until "
           "their TTL ends them): the MongoDB document answered.", _API),
    Metric("api", "query.<part>", COUNTER,
           "Hybrid-model queries with a co-occurrence part (`sparse`: some recent item has "
           "stored partners) or without (`dense`).", _API),
    Metric("api", "filter.requests", COUNTER,
           "Requests with attribute filters (any of the three listing endpoints).", _API),
    Metric("api", "filter.dropped", COUNTER,
           "Candidates dropped by a request's attribute filter (over filter.requests: the "
           "drop rate; a high one means the over-fetch is too small for such filters).",
           _API),
    Metric("api", "filter.pushdown", COUNTER,
           "Filtered recommendation requests searched within the ids the filter lets "
           "through (`only`), not over-fetched.", _API),
    Metric("api", "filter.partial", COUNTER,
           "Filtered answers with fewer than `k` items (`\"partial\": true`).", _API),
    Metric("api", "rank.requests", COUNTER,
           "Personalised requests through the ranking stage (candidates of every source, "
           "merged and scored).", _API),
    Metric("api", "rank.learned", COUNTER,
           "Ranking-stage requests ordered by the learned ranker.", _API),
    Metric("api", "rank.retrieval_order", COUNTER,
           "Ranking-stage requests in the FAISS order (no ranker published yet, or "
           "`order=` asked for another).", _API),
    Metric("api", "rank.candidates.<source>", COUNTER,
           "Candidates proposed per source (`ann`, `cooc`, `popular`; over rank.requests: "
           "candidates per request).", _API),
    Metric("api", "rank.latency", TIMER,
           "Merge, features and ranker of one request, ms (sampled like the request "
           "latencies).", _API),
    Metric("api", "user_cache.hit", COUNTER, "User-document cache hits.", _API),
    Metric("api", "user_cache.miss", COUNTER, "User-document cache misses.", _API),
    # --- FAISS service ------------------------------------------------------------------
    Metric("faiss", "requests.<resource>.<method>.<status>", COUNTER,
           "HTTP requests by resource (`search`, `similar`, `item`, `index`, `versions`, "
           "`snapshot`, `health`, `openapi`), method and status code.",
           ("common/http_metrics.py",)),
    Metric("faiss", "latency.<resource>.<method>", TIMER, "Request latency in ms.",
           ("common/http_metrics.py",)),
    Metric("faiss", "index.swaps", COUNTER,
           "Index versions loaded and swapped in (each export is one).",
           ("faiss_server/app.py",)),
    Metric("faiss", "index.size", GAUGE, "Vectors in the index version just swapped in.",
           ("faiss_server/app.py",)),
)


# --- scanning the code ----------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """A metric name the code sends: a regex (f-string fields match anything)."""

    source: str
    line: int
    type: str
    pattern: str

    def matches(self, metric: Metric) -> bool:
        return metric.type == self.type and re.fullmatch(self.pattern, metric.sample()) is not None


_CALL_TYPES = {"incr": COUNTER, "decr": COUNTER, "_incr": COUNTER, "gauge": GAUGE,
               "timing": TIMER, "timer": TIMER}


def _pattern(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(re.escape(str(part.value)))
            else:
                out.append(".+")
        return "".join(out)
    return None


def scan_text(text: str, source: str) -> list[Found]:
    """Metric names sent by one module's code (non-literal names are not counted)."""
    found: list[Found] = []
    for node in ast.walk(ast.parse(text, filename=source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            attr = node.func.attr
            if attr in _CALL_TYPES:
                pat = _pattern(node.args[0])
                if pat is not None:
                    found.append(Found(source, node.lineno, _CALL_TYPES[attr], pat))
            elif (attr == "append" and isinstance(node.func.value, ast.Attribute)
                  and node.func.value.attr == "_timings"
                  and isinstance(node.args[0], ast.Tuple) and node.args[0].elts):
                pat = _pattern(node.args[0].elts[0])
                if pat is not None:
                    found.append(Found(source, node.lineno, TIMER, pat))
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
              and node.value.attr == "_counts"):
            pat = _pattern(node.slice)
            if pat is not None:
                found.append(Found(source, node.lineno, COUNTER, pat))
    return found


def scan_sources(root: Path = PROJECT_ROOT) -> list[Found]:
    """Every metric name sent by the files in :data:`SOURCES`."""
    found: list[Found] = []
    for rel in SOURCES:
        found.extend(scan_text((root / rel).read_text(encoding="utf-8"), rel))
    return found


def undocumented(found: Iterable[Found], metrics: Iterable[Metric] = METRICS) -> list[Found]:
    """Names the code sends that no catalogue entry of that file and type describes."""
    metrics = list(metrics)
    return [f for f in found
            if not any(f.source in m.sources and f.matches(m) for m in metrics)]


def unsent(found: Iterable[Found], metrics: Iterable[Metric] = METRICS) -> list[Metric]:
    """Catalogue entries that no code in their source files sends any more."""
    found = list(found)
    return [m for m in metrics
            if not any(f.source in m.sources and f.matches(m) for f in found)]


# --- Graphite paths --------------------------------------------------------------------
_PATH = re.compile(r"stats\.(?:counters|timers|gauges)\.(?:[\w.$*\-\[\]<>]|\{[^{}()]*\})+")


def graphite_paths(target: str) -> list[str]:
    """The ``stats.*`` series paths inside a Graphite target expression."""
    return _PATH.findall(target)


def _expand_braces(glob: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", glob)
    if not m:
        return [glob]
    return [x for alt in m.group(1).split(",")
            for x in _expand_braces(glob[:m.start()] + alt + glob[m.end():])]


def check_path(path: str, prefix_vars: Iterable[str] = ("$prefix", "${prefix}"),
               metrics: Iterable[Metric] = METRICS) -> str | None:
    """``None`` if the Graphite path names a catalogued metric, else why it does not.

    ``*`` in the path stands for any one segment; ``{a,b}`` alternatives must all exist.
    """
    metrics = list(metrics)
    for var in prefix_vars:
        path = path.replace(var, "PREFIX")
    kind = next((k for k, root in GRAPHITE_ROOT.items() if path.startswith(root + ".")), None)
    if kind is None:
        return f"{path}: not under stats.counters|timers|gauges"
    rest = path[len(GRAPHITE_ROOT[kind]) + 1:]
    for alt in _expand_braces(rest):
        parts = alt.split(".")
        if len(parts) < 3:
            return f"{path}: expected <prefix>.<component>.<name>"
        component, name_parts = parts[1], parts[2:]
        if kind != GAUGE:
            leaf = name_parts[-1]
            allowed = COUNTER_STATS if kind == COUNTER else TIMER_STATS
            if leaf not in allowed:
                return f"{path}: {leaf!r} is not a statsd {kind} series ({sorted(allowed)})"
            name_parts = name_parts[:-1]
        name = ".".join(name_parts).replace("*", "ANY")
        if not any(m.component == component and m.type == kind
                   and m.regex().fullmatch(name) for m in metrics):
            return f"{path}: no {kind} {component}.{'.'.join(name_parts)} in ops/metrics.py"
    return None


# --- reference table ----------------------------------------------------------------------
def markdown(prefix: str = "recsys") -> str:
    """The metric reference (``ops/METRICS.md``)."""
    lines = [
        "# Metric reference",
        "",
        "Generated from `ops/metrics.py` (`python -m ops.metrics > ops/METRICS.md`);",
        "`tests/test_ops_dashboard.py` checks it against the code.",
        "",
        f"statsd names below use the default prefix `{prefix}` (`RECSYS_STATSD_PREFIX`);",
        "`<x>` stands for one name segment. In Graphite (statsd `legacyNamespace: false`,",
        "1 s flush) they are stored as:",
        "",
        "| type | Graphite series |",
        "|---|---|",
        "| counter | `stats.counters.<name>.rate` (per second), `.count` (per flush) |",
        "| timer | `stats.timers.<name>.mean`, `.upper_99`, `.mean_99`, `.upper_90`, "
        "`.count_ps`, `.median`, ... (ms) |",
        "| gauge | `stats.gauges.<name>` |",
        "",
        "| metric | type | meaning | source |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        src = ", ".join(f"`{s}`" for s in m.sources)
        lines.append(f"| `{m.full_name(prefix)}` | {m.type} | {m.meaning} | {src} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
