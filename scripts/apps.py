"""Start, stop and inspect the project's own processes: FAISS service, API, worker.

    python -m scripts.apps up        # idempotent; each process detached, PID file + log
    python -m scripts.apps status
    python -m scripts.apps down      # stops only what `up` started

The work is :class:`devstack.apps.AppManager`'s. Logs go to ``.local/logs/<name>.log``,
PID files to ``.local/run/<name>.pid``.
"""

from __future__ import annotations

import argparse
import sys

from common.settings import Settings
from devstack.apps import AppManager
from devstack.supervisor import StackError, print_status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the FAISS service, API and worker locally.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("names", nargs="*", help="faiss, api, worker (default: all)")
    args = p.parse_args(argv)
    manager = AppManager(Settings.from_env())
    try:
        if args.action == "up":
            manager.up(args.names or None)
        elif args.action == "down":
            stopped = manager.down(args.names or None)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing running"))
            return 0
    except StackError as exc:
        print(f"apps {args.action} failed: {exc}", file=sys.stderr)
        return 1
    print_status(manager.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
