"""Print (or, with ``--write``, refresh in README.md) the table of every ``RECSYS_*`` setting."""

from __future__ import annotations

import re
import sys

from common.settings import PROJECT_ROOT, documented_fields

START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, doc, default in documented_fields():
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
                 f"{START}\n{table()}\n{END}", text, flags=re.S)
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
