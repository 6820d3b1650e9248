"""Print (or, with ``--write``, refresh in README.md) the table of every ``RECSYS_*`` variable:
:class:`~common.settings.Settings` and each service's configuration class, from their field
docs (``common.settings.setting``)."""

from __future__ import annotations

import re
import sys
from typing import Any

from common.settings import PROJECT_ROOT, Settings, documented_fields
from faiss_server.config import FaissConfig, IndexSpec
from recommender_server.config import ApiConfig

START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"

#: Every class whose fields are environment variables, in README order.
CONFIG_CLASSES: tuple[type, ...] = (Settings, ApiConfig, FaissConfig, IndexSpec)


def documented() -> list[tuple[str, str, Any]]:
    """``(env var, meaning, default)`` of every variable of every configuration class."""
    return [row for cls in CONFIG_CLASSES for row in documented_fields(cls)]


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, doc, default in documented():
        shown = str(default).replace(str(PROJECT_ROOT) + "/", "")
        rows.append(f"| `{name}` | `{shown}` | {doc} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if "--write" not in argv:
        print(table())
        return 0
    readme = PROJECT_ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{table()}\n{END}", text, flags=re.S)
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
