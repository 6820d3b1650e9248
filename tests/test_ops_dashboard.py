"""The operators' view stays true to the code: dashboard, graphs and metric reference.

Metric names are read from the code (``ops.metrics.scan_sources``) and compared with the
catalogue in ``ops/metrics.py``; every Grafana/PNG target must name a catalogued metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.settings import PROJECT_ROOT
from ops import dashboard, metrics
from ops.metrics import check_path, graphite_paths, scan_sources, scan_text, undocumented, unsent
from ops.panels import PANELS

DASHBOARD = PROJECT_ROOT / "ops" / "grafana" / "recsys-dashboard.json"


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _targets(board: dict) -> list[str]:
    return [t["target"] for p in board["panels"] for t in p["targets"]]


def test_dashboard_file_is_the_generated_one() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == dashboard.render(), (
        "ops/grafana/recsys-dashboard.json is stale: edit ops/panels.py, then run "
        "`python -m ops.dashboard > ops/grafana/recsys-dashboard.json`")


def test_dashboard_is_well_formed(board: dict) -> None:
    names = {v["name"]: v for v in board["templating"]["list"]}
    assert names["DS_GRAPHITE"]["type"] == "datasource"
    assert names["DS_GRAPHITE"]["query"] == "graphite"
    assert "prefix" in names
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["title"] and p["targets"], p
        assert p["datasource"]["uid"] == "${DS_GRAPHITE}"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_GRAPHITE}"
            assert t["target"].count("(") == t["target"].count(")"), t["target"]


def test_every_target_names_a_metric_the_code_sends(board: dict) -> None:
    problems = []
    for target in _targets(board):
        paths = graphite_paths(target)
        if not paths:
            problems.append(f"{target}: no stats.* series")
        problems += [msg for msg in map(check_path, paths) if msg]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("needle", [
    "worker.events.interactions.rate", "api.requests.", "worker.consumer.lag.p*",
    "worker.latency.click_to_vector_ms.upper_99", "worker.latency.click_to_vector_ms.mean",
    "api.latency.", "worker.dead_letters.rate", "worker.model.users", "worker.model.items",
    "worker.batch.learn_ms", "worker.batch.write_ms", "worker.export.duration_ms",
    "faiss.index.swaps",
])
def test_dashboard_covers_the_operators_questions(board: dict, needle: str) -> None:
    assert any(needle in t for t in _targets(board)), needle


def test_png_graphs_cover_throughput_lag_freshness_latency() -> None:
    assert {p.key for p in PANELS if p.png} >= {
        "throughput_worker", "throughput_api", "consumer_lag", "freshness", "api_latency"}


def test_catalogue_matches_the_code() -> None:
    found = scan_sources()
    assert len(found) > 20, "the scanner found almost nothing: did the code move?"
    missing = undocumented(found)
    assert not missing, "sent by the code but not in ops/metrics.py:\n" + "\n".join(
        f"{f.source}:{f.line} {f.type} {f.pattern}" for f in missing)
    stale = unsent(found)
    assert not stale, "in ops/metrics.py but no longer sent: " + ", ".join(
        m.full_name() for m in stale)


def test_scanner_sees_literals_fstrings_and_aggregators() -> None:
    code = (
        "def f(self, m, name):\n"
        "    m.incr('brand.new', 3)\n"
        "    m.timing(f'latency.{name}.x', 1.0)\n"
        "    self._counts[f'fallback.{name}'] += 1\n"
        "    self._timings.append((f'latency.{name}', 2.0))\n"
        "    m.gauge(name, 1)\n"   # not a literal: cannot be checked, not counted
        "    ready.set()\n"
    )
    found = scan_text(code, "streams/pipeline.py")
    assert {(f.type, f.pattern) for f in found} == {
        ("counter", "brand\\.new"), ("timer", "latency\\..+\\.x"),
        ("counter", "fallback\\..+"), ("timer", "latency\\..+")}
    missing = undocumented(found)
    assert {f.pattern for f in missing} >= {"brand\\.new", "latency\\..+\\.x",
                                            "fallback\\..+"}


def test_check_path_rejects_what_is_not_sent() -> None:
    assert check_path("stats.counters.$prefix.worker.events.interactions.rate") is None
    assert check_path("stats.counters.$prefix.worker.events.clicks.rate")  # no such metric
    assert check_path("stats.gauges.$prefix.worker.events.interactions")  # wrong type
    assert check_path("stats.timers.$prefix.worker.batch.learn_ms.upper_95")  # not computed
    assert check_path("stats.counters.$prefix.api.events.interactions.rate")  # wrong process
    assert check_path("stats.timers.$prefix.api.latency.{recommendations,nope.x}.get.mean")


def test_metric_reference_is_up_to_date() -> None:
    path = PROJECT_ROOT / "ops" / "METRICS.md"
    assert path.read_text(encoding="utf-8") == metrics.markdown(), (
        "ops/METRICS.md is stale: run `python -m ops.metrics > ops/METRICS.md`")
    for m in metrics.METRICS:
        assert all((PROJECT_ROOT / s).exists() for s in m.sources), m


def test_sources_exist() -> None:
    for rel in metrics.SOURCES:
        assert Path(PROJECT_ROOT / rel).is_file(), rel
