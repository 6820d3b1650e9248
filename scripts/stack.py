"""Start, stop and inspect the local stack: Tansu (Kafka), SecantusDB (MongoDB), Redis.

    python -m scripts.stack up       # idempotent: reuses whatever already answers
    python -m scripts.stack status   # each service, its URL, whether it answers
    python -m scripts.stack down     # stops only what `up` started (PID files)

The work is :class:`devstack.stack.StackManager`'s (``--metrics``: and
:class:`devstack.metrics_stack.MetricsStack`'s).
"""

from __future__ import annotations

import argparse
import logging
import sys

from common.settings import Settings
from devstack.metrics_stack import MetricsStack
from devstack.stack import StackManager
from devstack.supervisor import StackError, Supervisor, print_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--metrics", action="store_true",
                        help="also statsd + Graphite (scripts.metrics_stack)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.from_env()
        managers: list[Supervisor] = [StackManager(settings)]
        if args.metrics:
            managers.append(MetricsStack(settings))
        if args.action == "up":
            for manager in managers:
                manager.up()
        elif args.action == "down":
            stopped = [name for manager in reversed(managers) for name in manager.down()]
            print("stopped: " + (", ".join(stopped) if stopped else "nothing (none started here)"))
            return 0
        answering = print_status([row for manager in managers for row in manager.status()])
        return 0 if answering or args.action == "up" else 1
    except StackError as exc:
        print(f"stack {args.action} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
