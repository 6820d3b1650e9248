"""Local metrics pipeline (statsd → carbon → graphite-web) and the PNG graphs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from common.settings import Settings
from devstack import graphs
from devstack.metrics_stack import RETENTIONS, MetricsStack
from devstack.processes import free_port
from scripts import graphs as graphs_cli


def test_generated_config_binds_loopback(tmp_path: Path) -> None:
    stack = MetricsStack(Settings.from_env(local_dir=tmp_path, statsd_port=18125),
                         graphite_port=18085, carbon_port=12003)
    stack.write_config()
    conf = tmp_path / "metrics" / "conf"
    carbon = (conf / "carbon.conf").read_text()
    assert "LINE_RECEIVER_INTERFACE = 127.0.0.1" in carbon
    assert "LINE_RECEIVER_PORT = 12003" in carbon
    assert "0.0.0.0" not in carbon
    assert RETENTIONS in (conf / "storage-schemas.conf").read_text()
    statsd = json.loads((conf / "statsd.js").read_text().split("\n", 1)[1].strip()[1:-1])
    assert statsd["address"] == "127.0.0.1" and statsd["port"] == 18125
    assert statsd["graphitePort"] == 12003 and statsd["flushInterval"] == 1000
    assert statsd["graphite"]["legacyNamespace"] is False
    assert 99 in statsd["percentThreshold"]
    settings_py = (conf / "recsys_graphite_settings.py").read_text()
    compile(settings_py, "recsys_graphite_settings.py", "exec")
    assert str(tmp_path / "metrics" / "whisper") in settings_py


def test_status_and_down_without_anything_started(tmp_path: Path) -> None:
    stack = MetricsStack(Settings.from_env(local_dir=tmp_path, statsd_port=free_port()),
                         graphite_port=free_port(), carbon_port=free_port(),
                         carbon_pickle_port=free_port(), carbon_query_port=free_port(),
                         statsd_mgmt_port=free_port())
    assert stack.down() == []
    rows = stack.status()
    assert [r["service"] for r in rows] == ["carbon", "graphite-web", "statsd"]
    assert not any(r["answers"] for r in rows)


def test_graphs_fail_clearly_without_graphite(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(graphs.GraphiteUnavailable, match="not answering"):
        graphs.save_graphs(tmp_path, graphite=url)
    assert graphs_cli.main(["--out", str(tmp_path), "--graphite", url, "--from", "-5min"]) == 2


def test_relative_times_are_accepted() -> None:
    assert graphs_cli._join_relative_times(["--out", "x", "--from", "-10min"]) == \
        ["--out", "x", "--from=-10min"]


@pytest.mark.integration
def test_round_trip_and_graphs(settings: Settings, tmp_path: Path) -> None:
    """Reuses a running metrics stack (or starts it; first run installs packages)."""
    stack = MetricsStack(settings)
    stack.up(timeout_s=30)
    assert all(r["answers"] for r in stack.status())
    import statsd

    worker = statsd.StatsClient("127.0.0.1", settings.statsd_port,
                                prefix=f"{settings.statsd_prefix}.worker")
    for _ in range(3):
        worker.incr("events.interactions", 100)
        worker.timing("latency.click_to_vector_ms", 250)
        worker.gauge("consumer.lag.p0", 7)
        time.sleep(1.0)
    files = graphs.save_graphs(tmp_path, stack.graphite_url, settings.statsd_prefix, "-5min")
    assert {f.name for f in files} >= {"throughput_worker.png", "consumer_lag.png",
                                        "freshness.png", "api_latency.png"}
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)
    from devstack.metrics_stack import fetch_json, render_url

    target = f"stats.timers.{settings.statsd_prefix}.worker.latency.click_to_vector_ms.upper_99"
    deadline = time.monotonic() + 10
    values: list[float] = []
    while time.monotonic() < deadline and not values:
        series = fetch_json(render_url(stack.graphite_url, [target], format="json",
                                       **{"from": "-5min"}))
        values = [v for s in series for v, _ in s["datapoints"] if v is not None]
        time.sleep(0.5)
    assert values and max(values) == pytest.approx(250)
