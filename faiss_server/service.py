"""The index the service answers from, and the only code that changes it.

Concurrency model (why no search ever fails during a swap):

- ``_current`` is a reference to a :class:`VectorIndex`. Every search and every single-item
  write runs under ``_lock`` on whatever ``_current`` was when it took the lock, so a search
  in flight finishes on the old index.
- A version load builds the new index *outside* the lock (seconds to minutes), saves it,
  then under ``_lock`` replays the upserts/deletes that arrived meanwhile (the journal) and
  swaps the reference. Loads are serialised by ``_load_lock``; writers are single.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import IndexNotReady
from faiss_server.config import IndexSpec
from faiss_server.index import Hit, VectorIndex, as_matrix

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class IndexService:
    """Owns the current :class:`VectorIndex`; thread-safe."""

    def __init__(self, spec: IndexSpec, data_dir: Path | None = None,
                 keep_versions: int = 3) -> None:
        self.spec = spec
        self.data_dir = data_dir
        #: Saved versions kept besides the serving one (older folders are deleted).
        self.keep_versions = keep_versions
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._journal: list[tuple[str, str, np.ndarray | None]] | None = None
        self._current: VectorIndex | None = None
        self.swaps = 0

    # --- start-up -------------------------------------------------------------------
    def start(self) -> None:
        """Load the saved current version if any, else start empty (``ivf``: not ready)."""
        loaded = self._load_saved()
        if loaded is not None:
            self._current = loaded
            log.info("loaded index version %s (%d items)", loaded.version, len(loaded))
        elif self.spec.kind != "ivf":
            self._current = VectorIndex.empty(self.spec)

    def _load_saved(self) -> VectorIndex | None:
        if self.data_dir is None or not (self.data_dir / "CURRENT").exists():
            return None
        name = (self.data_dir / "CURRENT").read_text().strip()
        folder = self.data_dir / "versions" / name
        try:
            return VectorIndex.load(folder)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.error("cannot load saved index %s: %s", folder, exc)
            return None

    # --- reading --------------------------------------------------------------------
    @property
    def current(self) -> VectorIndex:
        idx = self._current
        if idx is None:
            raise IndexNotReady("no index version loaded yet")
        return idx

    def search(self, queries: Any, k: int, exclude: Sequence[str] = (),
               boosts: Sequence[Mapping[str, float]] = (),
               only: Sequence[str] = ()) -> tuple[str, list]:
        """``(version, hits per query)``; ``boosts``, ``only``: see
        :meth:`VectorIndex.search`."""
        with self._lock:
            idx = self.current
            x = as_matrix(queries, idx.spec.dim)
            return idx.version, idx.search(x, k, exclude, boosts, only)

    def similar(self, item_id: str, k: int, exclude: Sequence[str] = ()) -> tuple[str, list[Hit]]:
        with self._lock:
            idx = self.current
            return idx.version, idx.similar(item_id, k, exclude)

    def info(self) -> dict[str, Any]:
        idx = self._current
        base = {"swaps": self.swaps, "loading": self._journal is not None}
        if idx is None:
            return {**base, "version": None, "size": 0, "dim": self.spec.dim,
                    "kind": self.spec.kind, "params": self.spec.to_dict()}
        return {**base, **idx.info()}

    # --- single-item writes -----------------------------------------------------------
    def upsert(self, item_id: str, vector: Any) -> str:
        with self._lock:
            idx = self.current
            x = as_matrix(vector, idx.spec.dim)
            if len(x) != 1:
                raise ValueError("upsert takes exactly one vector")
            idx.upsert(item_id, x)
            if self._journal is not None:
                self._journal.append(("upsert", item_id, x))
            return idx.version

    def delete(self, item_id: str) -> str:
        with self._lock:
            idx = self.current
            idx.delete(item_id)
            if self._journal is not None:
                self._journal.append(("delete", item_id, None))
            return idx.version

    # --- versions -------------------------------------------------------------------
    def load_version(self, version: str, ids: Sequence[str], vectors: Any) -> dict[str, Any]:
        """Build ``version`` from arrays, save it, swap it in; returns its info."""
        if not VERSION_RE.match(version):
            raise ValueError("version must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        with self._load_lock:
            with self._lock:
                self._journal = []
            try:
                new = VectorIndex.build(self.spec, version, ids, vectors)
                if self.data_dir is not None:
                    new.save(self.data_dir / "versions" / version)
                self._swap(new)
            finally:
                with self._lock:
                    self._journal = None
            self.prune()
            return new.info()

    def _swap(self, new: VectorIndex) -> None:
        with self._lock:
            for op, item_id, x in self._journal or []:
                if op == "upsert":
                    assert x is not None  # journalled upserts always carry their vector
                    new.upsert(item_id, x)
                elif item_id in new:
                    new.delete(item_id)
            self._journal = None
            self._current = new
            self.swaps += 1
        if self.data_dir is not None:
            tmp = self.data_dir / "CURRENT.tmp"
            tmp.write_text(new.version)
            tmp.replace(self.data_dir / "CURRENT")

    def snapshot(self) -> dict[str, Any]:
        """Save the current index (with single-item writes since its load) to disk."""
        if self.data_dir is None:
            return self.info()
        with self._lock:
            idx = self.current
            t0 = time.perf_counter()
            idx.save(self.data_dir / "versions" / idx.version)
        tmp = self.data_dir / "CURRENT.tmp"
        tmp.write_text(idx.version)
        tmp.replace(self.data_dir / "CURRENT")
        with self._load_lock:  # never while a load is saving its new folder
            self.prune()
        return {**self.info(), "saved_ms": round((time.perf_counter() - t0) * 1000, 1)}

    def prune(self) -> list[str]:
        """Delete saved versions beyond the newest ``keep_versions`` (the serving one is
        always kept); returns the names deleted. Exports every few seconds would
        otherwise fill the disk (165 folders, 121 MB in two hours of 30 s exports)."""
        if self.data_dir is None or not (self.data_dir / "versions").is_dir():
            return []
        serving = self._current.version if self._current is not None else None
        folders = [f for f in (self.data_dir / "versions").iterdir()
                   if f.is_dir() and f.name != serving]
        folders.sort(key=lambda f: f.stat().st_mtime, reverse=True)
        doomed = folders[max(0, self.keep_versions):]
        for folder in doomed:
            shutil.rmtree(folder, ignore_errors=True)
        if doomed:
            log.info("pruned %d saved index versions", len(doomed))
        return [f.name for f in doomed]
