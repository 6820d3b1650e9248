"""Save PNG graphs of the operators' panels, rendered by Graphite's render API.

    python -m scripts.graphs --out DIR [--from -10min] [--until now] [--all]
                             [--graphite http://127.0.0.1:8085] [--prefix recsys]

Default graphs: worker throughput, API requests, consumer lag, freshness
(click → vector p99/mean), API latency (p99/mean); ``--all`` adds every dashboard panel
(:mod:`ops.panels`). Needs the metrics stack (``python -m scripts.metrics_stack up``).
Prints one written file per line; exits 2 if Graphite does not answer
(:func:`devstack.graphs.save_graphs` does the work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.settings import Settings
from devstack.graphs import DEFAULT_GRAPHITE, GraphiteUnavailable, save_graphs
from ops.panels import PANELS


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
