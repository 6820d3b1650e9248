"""Fault drills against the whole running system, with figures.

    python -m scripts.drill                  # every drill, default sizes
    python -m scripts.drill worker-kill faiss-restart --events 20000

The drills live in :mod:`devstack.drills` (see :mod:`devstack.drills.system` for what
each one does). Prints one JSON line per drill; exits non-zero if any drill failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from devstack.drills.system import DRILLS, run_drill
from devstack.drills.world import DrillFailed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fault drills against the whole system.")
    p.add_argument("drills", nargs="*", help=f"any of {', '.join(DRILLS)} (default: all)")
    p.add_argument("--events", type=int, default=None, help="worker-kill: events to replay")
    args = p.parse_args(argv)
    unknown = [d for d in args.drills if d not in DRILLS]
    if unknown:
        p.error(f"unknown drill(s) {unknown}; choose from {list(DRILLS)}")
    failed = 0
    for name in args.drills or list(DRILLS):
        kwargs = {"events": args.events} if name == "worker-kill" and args.events else {}
        try:
            print(json.dumps(run_drill(name, **kwargs)), flush=True)
        except DrillFailed as exc:
            failed += 1
            print(json.dumps({"drill": name, "failed": str(exc)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
