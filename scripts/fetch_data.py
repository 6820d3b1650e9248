"""Fetch MovieLens 100k into the cache folder (verified by SHA-256) and print its shape.

    python -m scripts.fetch_data
"""

from __future__ import annotations

import json
import sys

from common.settings import Settings
from datasets import movielens


def main() -> int:
    settings = Settings.from_env()
    try:
        ds = movielens.load(settings.cache_dir)
    except movielens.DataFetchError as exc:
        print(f"fetch_data failed: {exc}", file=sys.stderr)
        return 1
    inter = ds.interactions
    print(json.dumps({"dataset": ds.name, "folder": str(movielens.fetch(settings.cache_dir)),
                      "interactions": len(inter), "users": inter.n_users(),
                      "items": len(ds.items)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
