"""Configuration of the FAISS service.

Connection-level values (port, API key, folders) come from :class:`common.settings.Settings`
(env vars ``RECSYS_*``); index parameters are class-attribute defaults here, overridden by
keyword arguments (``scripts/serve.py faiss --kind hnsw ...`` passes them through).

Index kinds (all inner-product):

- ``flat``: exact ``IndexIDMap2(IndexFlatIP)``; small catalogues (≲ 200k items), real deletes.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; low latency at 1M, no index training; deletes and
  re-upserts leave tombstones (filtered with an ``IDSelector``) until the next version load.
- ``ivf``: ``IndexIVFFlat`` with a hashtable direct map (native int64 ids, real deletes,
  reconstruct); needs training, so it starts "not ready" until a version is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import Settings

INDEX_KINDS = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexSpec:
    """Shape and parameters of an index; saved with every version."""

    dim: int = 64
    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 64
    ivf_nlist: int = 4096
    ivf_nprobe: int = 32
    #: IVF trains k-means on at most this many vectors (≈ 40-100 per list is plenty).
    ivf_train_size: int = 200_000

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if not 1 <= self.dim <= 4096:
            raise ValueError(f"dim must be in 1..4096, got {self.dim}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class FaissConfig:
    """Everything the FAISS service process needs."""

    spec: IndexSpec = field(default_factory=IndexSpec)
    api_key: str = "local-dev-key"
    #: Where versions are saved (``versions/<name>/`` + ``CURRENT``); ``None``: memory only.
    data_dir: Path | None = None
    #: ``POST /v1/index/versions`` with a ``path`` may only read files under these folders.
    load_roots: tuple[Path, ...] = ()
    max_k: int = 1000
    max_batch: int = 256
    max_exclude: int = 10_000
    #: Limit for JSON bodies (search, upsert): 413 beyond (``RECSYS_FAISS_MAX_JSON_BYTES``).
    max_json_bytes: int = 4 * 1024 * 1024
    #: Limit for an uploaded ``.npz`` version (1M × 64 float32 ≈ 256 MB + ids).
    max_upload_bytes: int = 1024 * 1024 * 1024
    #: Limit for the *uncompressed* arrays of a version ``.npz`` (upload or path), read
    #: from the zip directory and the ``.npy`` headers before anything is loaded: a 1 MB
    #: zip bomb must not allocate gigabytes (``RECSYS_FAISS_MAX_NPZ_BYTES``).
    max_npz_bytes: int = 1024 * 1024 * 1024
    #: Saved versions kept on disk besides the serving one (``RECSYS_FAISS_KEEP_VERSIONS``).
    keep_versions: int = 3
    #: OpenMP threads of a search (set on the event-loop thread at start-up); version
    #: builds run in worker threads and use every core.
    omp_threads: int = 1
    #: statsd prefix suffix (``{statsd_prefix}.faiss.*``).
    metrics_suffix: str = "faiss"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> FaissConfig:
        """Defaults from ``settings``; ``overrides`` may hold :class:`IndexSpec` fields too."""
        spec_names = {f.name for f in dataclasses.fields(IndexSpec)}
        spec_over = {k: overrides.pop(k) for k in list(overrides) if k in spec_names}
        spec = overrides.pop("spec", None) or IndexSpec(**spec_over)
        values: dict[str, Any] = {
            "spec": spec,
            "api_key": settings.faiss_api_key,
            "data_dir": settings.local_dir / "faiss",
            "load_roots": (settings.model_dir, settings.local_dir),
            "max_json_bytes": settings.faiss_max_json_bytes,
            "max_npz_bytes": settings.faiss_max_npz_bytes,
            "keep_versions": settings.faiss_keep_versions,
        }
        values.update(overrides)
        return cls(**values)
