"""Build the Grafana dashboard JSON from :data:`ops.panels.PANELS`.

    python -m ops.dashboard > ops/grafana/recsys-dashboard.json

The data source is the ``DS_GRAPHITE`` dashboard variable (type ``datasource``, query
``graphite``): imported by hand it offers the Graphite data sources to pick from;
provisioned (``deploy/docker-compose.yml``) it selects the provisioned one. ``prefix``
is ``RECSYS_STATSD_PREFIX`` (``recsys``). ``tests/test_ops_dashboard.py`` checks the file
is this output and that every target names a metric the code sends.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ops.panels import PANELS, Panel

UID = "recsys-operators"
DATASOURCE = {"type": "graphite", "uid": "${DS_GRAPHITE}"}


def _panel(n: int, p: Panel) -> dict[str, Any]:
    return {
        "id": n + 1,
        "type": "timeseries",
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
        "fieldConfig": {
            "defaults": {"unit": p.unit, "min": 0,
                         "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                    "spanNulls": True, "showPoints": "never"}},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "target": t}
                    for i, t in enumerate(p.targets)],
    }


def build_dashboard() -> dict[str, Any]:
    return {
        "__inputs": [{"name": "DS_GRAPHITE", "label": "Graphite", "type": "datasource",
                      "pluginId": "graphite", "pluginName": "Graphite"}],
        "__requires": [{"type": "datasource", "id": "graphite", "name": "Graphite",
                        "version": "1.0.0"},
                       {"type": "panel", "id": "timeseries", "name": "Time series",
                        "version": ""}],
        "uid": UID,
        "title": "Real-time recommender — operators' view",
        "description": "Throughput, consumer lag, freshness and latency (statsd → Graphite). "
                       "Metric reference: ops/METRICS.md.",
        "tags": ["recsys"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["1s", "5s", "10s", "30s", "1m", "5m"]},
        "templating": {"list": [
            {"name": "DS_GRAPHITE", "label": "Data source", "type": "datasource",
             "query": "graphite", "current": {}, "hide": 0, "refresh": 1, "options": []},
            {"name": "prefix", "label": "statsd prefix", "type": "custom",
             "query": "recsys", "current": {"text": "recsys", "value": "recsys"},
             "options": [{"text": "recsys", "value": "recsys", "selected": True}],
             "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": [_panel(n, p) for n, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
