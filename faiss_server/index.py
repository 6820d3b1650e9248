"""One version of the item index: a FAISS index plus the map between string and int ids.

External item ids are opaque strings; FAISS wants int64. Each item gets an internal int
(its position in ``ext_ids``, append-only) and the FAISS index is keyed by it — through
``IndexIDMap2`` for ``flat``/``hnsw`` (so ``reconstruct`` works by id) and natively for
``ivf`` (with a hashtable direct map for ``reconstruct``/``remove_ids``).

``hnsw`` cannot remove vectors, so a delete or a re-upsert turns the old internal id into a
tombstone that searches skip through an ``IDSelector``; loading a new version compacts.

A :class:`VectorIndex` is not thread-safe on its own; :class:`faiss_server.service.IndexService`
serialises access. Saved as ``index.faiss`` (FAISS's own format), ``ids.npy`` (unicode
array, no pickle) and ``meta.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Idle OpenMP threads must sleep, not spin: on 2 cores a spinning pool steals the CPU the
# API, Redis and MongoDB need (measured: 3 ms → 0.3 ms per search request). The OpenMP
# runtime reads this once, when faiss loads it: so here, before the only faiss import of
# the project (whatever starts the service: scripts.serve, uvicorn faiss_server.asgi:app).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss as _faiss  # noqa: E402  (after the OpenMP setting above)

from common.errors import IndexNotReady, UnknownItem  # noqa: E402
from faiss_server.config import IndexSpec  # noqa: E402
from faiss_server.protocol import Hit  # noqa: E402

#: faiss's bundled stubs describe only the SWIG base classes (no IVF/HNSW attributes, no
#: keyword arguments of the search parameters), so the module is typed as ``Any``.
faiss: Any = _faiss

__all__ = ["Hit", "VectorIndex", "as_matrix", "exact_top", "set_search_threads"]


def set_search_threads(n: int) -> None:
    """OpenMP threads of faiss calls made *on the calling thread* (a per-thread setting).

    The service calls it on its event-loop thread at start-up: searches run there one
    query at a time and need no OpenMP team, while version builds run in worker threads
    and keep every core.
    """
    faiss.omp_set_num_threads(max(1, int(n)))


def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the exact inner-product top-``k`` of ``x`` per query (ground truth
    for recall measurements).

    >>> exact_top(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[:1], 1).tolist()
    [[0]]
    """
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(np.ascontiguousarray(x, dtype=np.float32))
    out: np.ndarray = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
    return out


def as_matrix(vectors: Any, dim: int) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` matrix, or ``ValueError``.

    >>> as_matrix([[1, 2]], 2).dtype
    dtype('float32')
    """
    with np.errstate(over="ignore"):  # 1e39 → inf, rejected below
        arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors must not contain NaN or infinity")
    return np.ascontiguousarray(arr)


class VectorIndex:
    """Item vectors of one version, searchable by inner product."""

    def __init__(
        self,
        spec: IndexSpec,
        version: str,
        index: faiss.Index,
        ext_ids: list[str | None],
        tombstones: set[int] | None = None,
        built_ms: float = 0.0,
    ) -> None:
        self.spec = spec
        self.version = version
        self.index = index
        self.ext_ids = ext_ids
        self.pos: dict[str, int] = {e: i for i, e in enumerate(ext_ids) if e is not None}
        self.tombstones: set[int] = set(tombstones or ())
        self.built_ms = built_ms
        self.loaded_at = time.time()
        self._dead_selector: Any = None
        self._configure_search()

    # --- construction ---------------------------------------------------------------
    @staticmethod
    def _new_faiss(spec: IndexSpec, train: np.ndarray | None) -> faiss.Index:
        ip = faiss.METRIC_INNER_PRODUCT
        if spec.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(spec.dim))
        if spec.kind == "hnsw":
            base = faiss.IndexHNSWFlat(spec.dim, spec.hnsw_m, ip)
            base.hnsw.efConstruction = spec.hnsw_ef_construction
            return faiss.IndexIDMap2(base)
        if train is None or len(train) == 0:
            raise IndexNotReady("an IVF index needs training data: load a version first")
        # Fewer lists than asked for on a small catalogue (k-means wants ≥ 39 points each).
        nlist = max(1, min(spec.ivf_nlist, len(train) // 39))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(spec.dim), spec.dim, nlist, ip)
        ivf.cp.min_points_per_centroid = 5
        ivf.cp.max_points_per_centroid = 256
        ivf.train(train)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return ivf

    @classmethod
    def empty(cls, spec: IndexSpec, version: str = "empty") -> VectorIndex:
        """An index with no items (``IndexNotReady`` for ``ivf``, which must be trained)."""
        return cls(spec, version, cls._new_faiss(spec, None), [])

    @classmethod
    def build(
        cls, spec: IndexSpec, version: str, ids: Sequence[str], vectors: Any, seed: int = 0
    ) -> VectorIndex:
        """A new version from parallel ``ids`` and ``vectors`` (later duplicates win)."""
        t0 = time.perf_counter()
        ids = [str(i) for i in ids]
        x = as_matrix(vectors, spec.dim) if len(ids) else np.zeros((0, spec.dim), np.float32)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids but {len(x)} vectors")
        if any(not i for i in ids):
            raise ValueError("item ids must be non-empty strings")
        last = {e: n for n, e in enumerate(ids)}  # keep the last row of a repeated id
        if len(last) != len(ids):
            keep = np.fromiter(sorted(last.values()), dtype=np.int64)
            ids, x = [ids[n] for n in keep], x[keep]
        train = None
        if spec.kind == "ivf":
            rng = np.random.default_rng(seed)
            n_train = min(len(x), spec.ivf_train_size)
            train = x[rng.choice(len(x), n_train, replace=False)] if n_train else x
        index = cls._new_faiss(spec, train)
        if len(x):
            index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
        built_ms = (time.perf_counter() - t0) * 1000
        return cls(spec, version, index, list(ids), built_ms=built_ms)

    # --- reading --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pos)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.pos

    def _configure_search(self) -> None:
        if self.spec.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = self.spec.hnsw_ef_search
        elif self.spec.kind == "ivf":
            self.index.nprobe = self.spec.ivf_nprobe
        self._refresh_dead_selector()

    def _refresh_dead_selector(self) -> None:
        if self.tombstones:
            arr = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
            self._dead_selector = (faiss.IDSelectorBatch(arr), arr)  # keep arr alive
        else:
            self._dead_selector = None

    def _params(self, skip: np.ndarray) -> tuple[Any, list[Any]]:
        """Search parameters that skip ``skip`` and the tombstones; plus objects to keep alive."""
        keep: list[Any] = []
        sels = []
        if len(skip):
            batch = faiss.IDSelectorBatch(skip)
            keep += [batch, skip]
            sels.append(batch)
        if self._dead_selector is not None:
            sels.append(self._dead_selector[0])
        if not sels:
            return None, keep
        inner = sels[0] if len(sels) == 1 else faiss.IDSelectorOr(sels[0], sels[1])
        sel = faiss.IDSelectorNot(inner)
        keep += [inner, sel]
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.spec.hnsw_ef_search)
        elif self.spec.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.spec.ivf_nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
        return params, keep

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[str] = (),
        boosts: Sequence[Mapping[str, float]] = (), only: Sequence[str] = (),
    ) -> list[list[Hit]]:
        """Top-``k`` ``(item_id, score)`` per query row, best first, skipping ``exclude``.

        ``boosts[r]`` (optional): ``{item id: value ≥ 0}`` added to row ``r``'s inner
        products (the sparse part of a dense + sparse query). The answer is then the top
        ``k`` by ``q · p + value`` over the dense top ``k`` and every boosted item, each
        scored exactly: an item with no boost can only be in the true top ``k`` if it is
        in the dense top ``k`` (boosts are never negative), so with an exact index the
        answer is the exact top ``k`` of the sum.

        ``only`` (optional): search among these ids alone, every one scored exactly
        (``q · p``, plus its boost): a request filter resolved to ids. Ids not indexed
        (or excluded) are skipped; none left gives no hits.
        """
        if self.index.ntotal == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        if boosts and len(boosts) != len(queries):
            raise ValueError(f"{len(boosts)} boost objects for {len(queries)} query vectors")
        if only:
            return self._within(queries, k, only, exclude, boosts)
        dense = self._search(queries, k, exclude)
        if not any(boosts):
            return dense
        skip = set(exclude)
        return [self._boosted(q, hits, b, skip, k) if b else hits
                for q, hits, b in zip(queries, dense, boosts, strict=True)]

    def _boosted(self, query: np.ndarray, hits: list[Hit], boost: Mapping[str, float],
                 skip: set[str], k: int) -> list[Hit]:
        """``hits`` merged with the boosted items (indexed, not skipped), each scored
        ``query · p + boost``; the best ``k``."""
        pos = self.pos
        ids = [i for i in boost if i in pos and i not in skip]
        if not ids:
            return hits
        values = np.fromiter(map(boost.__getitem__, ids), dtype=np.float64, count=len(ids))
        boosted = self._exact(query[None, :], ids)[0] + values
        # the dense hits not boosted keep their score; the boosted ones were rescored
        rest = [h for h in hits if h[0] not in boost]
        names = [h[0] for h in rest] + ids
        scores = np.concatenate([np.fromiter((h[1] for h in rest), dtype=np.float64,
                                             count=len(rest)), boosted])
        top = np.argsort(-scores, kind="stable")[:k]
        return [(names[j], float(scores[j])) for j in top.tolist()]

    def _within(self, queries: np.ndarray, k: int, only: Sequence[str],
                exclude: Sequence[str], boosts: Sequence[Mapping[str, float]]
                ) -> list[list[Hit]]:
        """The exact top ``k`` of each query among ``only`` (see :meth:`search`)."""
        skip = set(exclude)
        pos = self.pos
        ids = [i for i in dict.fromkeys(only) if i in pos and i not in skip]
        if not ids:
            return [[] for _ in range(len(queries))]
        scores = self._exact(queries, ids)
        kk = min(k, len(ids))
        out: list[list[Hit]] = []
        for r, row in enumerate(scores):
            boost = boosts[r] if boosts else None
            if boost:
                row = row + np.fromiter((boost.get(i, 0.0) for i in ids), dtype=np.float64,
                                        count=len(ids))
            top = np.argpartition(-row, kk - 1)[:kk]
            top = top[np.argsort(-row[top], kind="stable")]
            out.append([(ids[j], float(row[j])) for j in top.tolist()])
        return out

    def _exact(self, queries: np.ndarray, ids: list[str]) -> np.ndarray:
        """``(n queries, len(ids))`` exact inner products with the stored vectors of
        ``ids`` (all indexed), in float64: what boosted and ``only`` searches rank by."""
        rows = np.fromiter(map(self.pos.__getitem__, ids), dtype=np.int64, count=len(ids))
        return (queries @ self.index.reconstruct_batch(rows).T).astype(np.float64)

    def _search(self, queries: np.ndarray, k: int, exclude: Sequence[str]) -> list[list[Hit]]:
        """The dense top-``k`` of :meth:`search`."""
        skip = np.fromiter((self.pos[e] for e in set(exclude) if e in self.pos), dtype=np.int64)
        params, keep = self._params(skip)
        kk = min(k, len(self))
        scores, labels = self.index.search(queries, kk, params=params)
        del keep
        ext = self.ext_ids
        out: list[list[Hit]] = []
        for srow, lrow in zip(scores.tolist(), labels.tolist(), strict=True):
            hits = []
            for s, lab in zip(srow, lrow, strict=True):
                if lab < 0:
                    break
                item = ext[lab]
                if item is not None and math.isfinite(s):
                    hits.append((item, s))
            out.append(hits)
        return out

    def vector(self, item_id: str) -> np.ndarray:
        """The stored vector of ``item_id`` (``UnknownItem`` if absent)."""
        iid = self.pos.get(item_id)
        if iid is None:
            raise UnknownItem(f"item {item_id!r} is not in index version {self.version!r}")
        return self.index.reconstruct(iid).reshape(1, -1)

    def similar(self, item_id: str, k: int, exclude: Sequence[str] = ()) -> list[Hit]:
        """Items nearest to ``item_id``'s vector, never the item itself."""
        return self.search(self.vector(item_id), k, [item_id, *exclude])[0]

    # --- writing (single writer: the caller holds the service lock) -----------------
    def upsert(self, item_id: str, vector: np.ndarray) -> None:
        if not item_id:
            raise ValueError("item ids must be non-empty strings")
        if self.spec.kind == "ivf" and not self.index.is_trained:
            raise IndexNotReady("the IVF index is not trained: load a version first")
        old = self.pos.get(item_id)
        if old is not None and self.spec.kind != "hnsw":
            self.index.remove_ids(np.array([old], dtype=np.int64))
            self.index.add_with_ids(vector, np.array([old], dtype=np.int64))
            return
        if old is not None:  # hnsw: tombstone the old row, add a new one
            self.ext_ids[old] = None
            self.tombstones.add(old)
            self._refresh_dead_selector()
        iid = len(self.ext_ids)
        self.index.add_with_ids(vector, np.array([iid], dtype=np.int64))
        self.ext_ids.append(item_id)
        self.pos[item_id] = iid

    def delete(self, item_id: str) -> None:
        iid = self.pos.pop(item_id, None)
        if iid is None:
            raise UnknownItem(f"item {item_id!r} is not in index version {self.version!r}")
        self.ext_ids[iid] = None
        if self.spec.kind == "hnsw":
            self.tombstones.add(iid)
            self._refresh_dead_selector()
        else:
            self.index.remove_ids(np.array([iid], dtype=np.int64))

    # --- persistence (no pickle) ----------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "version": self.version, "size": len(self), "ntotal": int(self.index.ntotal),
            "tombstones": len(self.tombstones), "dim": self.spec.dim, "kind": self.spec.kind,
            "params": self.spec.to_dict(), "built_ms": round(self.built_ms, 1),
            "loaded_at": self.loaded_at,
        }

    def save(self, folder: Path) -> None:
        """Write this version into ``folder`` (files written then renamed into place)."""
        folder.mkdir(parents=True, exist_ok=True)
        ids = np.array([e or "" for e in self.ext_ids], dtype=str)
        if ids.dtype.kind != "U":
            ids = ids.astype("U1")
        faiss.write_index(self.index, str(folder / "index.faiss.tmp"))
        with open(folder / "ids.npy.tmp", "wb") as f:
            np.save(f, ids, allow_pickle=False)
        meta = {"version": self.version, "spec": self.spec.to_dict(),
                "tombstones": sorted(self.tombstones), "saved_at": time.time()}
        (folder / "meta.json.tmp").write_text(json.dumps(meta))
        for name in ("index.faiss", "ids.npy", "meta.json"):
            os.replace(folder / f"{name}.tmp", folder / name)

    @classmethod
    def load(cls, folder: Path) -> VectorIndex:
        meta = json.loads((folder / "meta.json").read_text())
        spec = IndexSpec.from_dict(meta["spec"])
        index = faiss.read_index(str(folder / "index.faiss"))
        raw = np.load(folder / "ids.npy", allow_pickle=False)
        ext_ids: list[str | None] = [e or None for e in raw.tolist()]
        if spec.kind == "ivf" and index.direct_map.type != faiss.DirectMap.Hashtable:
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(spec, str(meta["version"]), index, ext_ids, set(meta.get("tombstones", [])))
