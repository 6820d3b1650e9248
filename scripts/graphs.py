"""Save PNG graphs of the operators' panels, rendered by Graphite's render API.

    python -m scripts.graphs --out DIR [--from -10min] [--until now] [--all]
                             [--graphite http://127.0.0.1:8085] [--prefix recsys]

Default graphs: worker throughput, API requests, consumer lag, freshness
(click → vector p99/mean), API latency (p99/mean); ``--all`` adds every dashboard panel
(:mod:`ops.panels`). Needs the metrics stack (``python -m scripts.metrics_stack up``).
Prints one written file per line; exits 2 if Graphite does not answer.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

from common.settings import Settings
from ops.panels import PANELS, Panel

DEFAULT_GRAPHITE = "http://127.0.0.1:8085"


class GraphiteUnavailable(RuntimeError):
    """Graphite's render API did not answer (or did not answer with a graph)."""


def _render_url(graphite: str, panel: Panel, prefix: str, start: str, until: str,
                width: int, height: int) -> str:
    from scripts.metrics_stack import render_url

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


def _join_relative_times(argv: list[str]) -> list[str]:
    """``--from -10min`` → ``--from=-10min`` (argparse takes ``-10min`` for an option)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--from", "--until") and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--from", dest="start", default="-10min")
    p.add_argument("--until", default="now")
    p.add_argument("--graphite", default=DEFAULT_GRAPHITE)
    p.add_argument("--prefix", default=None, help="default: RECSYS_STATSD_PREFIX")
    p.add_argument("--all", action="store_true", help="every dashboard panel")
    args = p.parse_args(_join_relative_times(sys.argv[1:] if argv is None else argv))
    prefix = args.prefix or Settings.from_env().statsd_prefix
    try:
        files = save_graphs(args.out, args.graphite, prefix, args.start, args.until,
                            list(PANELS) if args.all else None)
    except GraphiteUnavailable as exc:
        print(f"graphs failed: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
