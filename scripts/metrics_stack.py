"""Start, stop and inspect the local metrics pipeline: statsd → carbon → graphite-web.

    python -m scripts.metrics_stack up       # installs what is missing, idempotent
    python -m scripts.metrics_stack status   # each service, its URL, whether it answers
    python -m scripts.metrics_stack down     # stops only what `up` started (PID files)

The work is :class:`devstack.metrics_stack.MetricsStack`'s.
"""

from __future__ import annotations

import argparse
import logging
import sys

from common.settings import Settings
from devstack.metrics_stack import MetricsStack
from devstack.supervisor import StackError, print_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--graphite-port", type=int, default=8085)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the statsd → Graphite round trip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        stack = MetricsStack(Settings.from_env(), graphite_port=args.graphite_port)
        if args.action == "up":
            stack.up(timeout_s=args.timeout)
            print("metrics stack ready: "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in stack.timings.items()))
        elif args.action == "down":
            stopped = stack.down()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing (none started here)"))
            return 0
        return 0 if print_status(stack.status()) else 1
    except StackError as exc:
        print(f"metrics_stack {args.action} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
