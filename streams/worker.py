"""`python -m streams.worker`: start the Faust worker (as `faust -A streams.app worker`)."""

from __future__ import annotations

import sys


def main() -> None:
    from streams.app import app

    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web", *sys.argv[1:]]
    app.main()


if __name__ == "__main__":
    main()
