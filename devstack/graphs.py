"""Save PNG graphs of the operators' panels, rendered by Graphite's render API.

Used by the demo and ``python -m scripts.graphs``. Default graphs: worker throughput,
API requests, consumer lag, freshness (click → vector p99/mean), API latency (p99/mean);
every dashboard panel is in :mod:`ops.panels`. Needs the metrics stack
(``python -m scripts.metrics_stack up``).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from devstack.metrics_stack import render_url
from ops.panels import PANELS, Panel

DEFAULT_GRAPHITE = "http://127.0.0.1:8085"


class GraphiteUnavailable(RuntimeError):
    """Graphite's render API did not answer (or did not answer with a graph)."""


def _render_url(graphite: str, panel: Panel, prefix: str, start: str, until: str,
                width: int, height: int) -> str:
    targets = [t.replace("$prefix", prefix) for t in panel.targets]
    return render_url(graphite, targets, format="png", width=str(width), height=str(height),
                      title=panel.title, vtitle=panel.unit, bgcolor="white", fgcolor="black",
                      majorGridLineColor="#cccccc", minorGridLineColor="#eeeeee",
                      hideLegend="false", **{"from": start, "until": until})


def check_graphite(graphite: str, timeout: float = 3.0) -> None:
    url = f"{graphite}/metrics/find?query=stats"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
    except (OSError, urllib.error.URLError) as exc:
        raise GraphiteUnavailable(
            f"Graphite is not answering at {graphite} ({exc}); start it with "
            "`python -m scripts.metrics_stack up`") from exc


def save_graphs(out: Path, graphite: str = DEFAULT_GRAPHITE, prefix: str = "recsys",
                start: str = "-10min", until: str = "now", panels: list[Panel] | None = None,
                width: int = 1000, height: int = 400, timeout: float = 30.0) -> list[Path]:
    """Render each panel to ``out/<key>.png``; returns the files written."""
    check_graphite(graphite)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for panel in panels if panels is not None else [p for p in PANELS if p.png]:
        url = _render_url(graphite, panel, prefix, start, until, width, height)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body, kind = resp.read(), resp.headers.get("Content-Type", "")
        except (OSError, urllib.error.URLError) as exc:
            raise GraphiteUnavailable(f"rendering {panel.key!r} failed at {graphite}: {exc}"
                                      ) from exc
        if not body.startswith(b"\x89PNG"):
            raise GraphiteUnavailable(f"rendering {panel.key!r}: Graphite answered {kind!r}, "
                                      f"not a PNG: {body[:200]!r}")
        path = out / f"{panel.key}.png"
        path.write_bytes(body)
        written.append(path)
    return written
