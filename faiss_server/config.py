"""Configuration of the FAISS service.

Every field is an environment variable: ``RECSYS_FAISS_<FIELD>`` for :class:`FaissConfig`,
``RECSYS_FAISS_INDEX_<FIELD>`` for :class:`IndexSpec` (the README's configuration table,
from these field docs), read by the one generic reader of :mod:`common.settings`.
Connection-level values (port, API key, folders) come from
:class:`common.settings.Settings`. ``FaissConfig.from_env(settings, **overrides)`` layers:
defaults (some derived from ``settings``), the environment, then explicit ``overrides``,
which may hold :class:`IndexSpec` fields too (``scripts/serve.py faiss --kind hnsw ...``
passes them). ``faiss_server.asgi`` and ``scripts.serve`` both start from it.

Index kinds (all inner-product):

- ``flat``: exact ``IndexIDMap2(IndexFlatIP)``; small catalogues (≲ 200k items), real deletes.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; low latency at 1M, no index training; deletes and
  re-upserts leave tombstones (filtered with an ``IDSelector``) until the next version load.
- ``ivf``: ``IndexIVFFlat`` with a hashtable direct map (native int64 ids, real deletes,
  reconstruct); needs training, so it starts "not ready" until a version is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from common.settings import Settings, env_values, setting

INDEX_KINDS = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexSpec:
    """Shape and parameters of an index; saved with every version."""

    env_prefix: ClassVar[str] = "RECSYS_FAISS_INDEX_"

    dim: int = setting("Dimension of the item vectors (1..4096); the default is the "
                       "product default model's (`hybrid`: 64 learnt + 32 content "
                       "coordinates).", 96)
    kind: str = setting("Index kind: `flat` (exact), `hnsw` or `ivf` (needs a version load "
                        "before it serves).", "flat")
    hnsw_m: int = setting("HNSW graph degree.", 32)
    hnsw_ef_construction: int = setting("HNSW build-time search depth.", 64)
    hnsw_ef_search: int = setting("HNSW query-time search depth.", 64)
    ivf_nlist: int = setting("IVF lists (k-means centroids).", 4096)
    ivf_nprobe: int = setting("IVF lists probed per query.", 32)
    ivf_train_size: int = setting("IVF trains k-means on at most this many vectors "
                                  "(≈ 40-100 per list is plenty).", 200_000)

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

    env_prefix: ClassVar[str] = "RECSYS_FAISS_"

    spec: IndexSpec = setting("The index (`RECSYS_FAISS_INDEX_*`).", env=False,
                              default_factory=IndexSpec)
    api_key: str = setting("Key of the write endpoints (`RECSYS_FAISS_API_KEY`).",
                           "local-dev-key", env=False)
    data_dir: Path | None = setting(
        "Where versions are saved (`versions/<name>/` + `CURRENT`); `none`: memory only.",
        None, shown="RECSYS_LOCAL_DIR/faiss")
    load_roots: tuple[Path, ...] = setting(
        "Comma-separated folders a version load by `path` may read from.", (),
        shown="RECSYS_MODEL_DIR,RECSYS_LOCAL_DIR")
    max_k: int = setting("Largest `k` of a search.", 1000)
    max_batch: int = setting("Most query vectors in one search request.", 256)
    max_exclude: int = setting("Most ids in one `exclude` list.", 10_000)
    max_boosts: int = setting("Most ids in one query's `boosts` object (the sparse part "
                              "of a dense + sparse search).", 10_000)
    max_only: int = setting("Most ids in one search's `only` list (searched exactly: a "
                            "filter the caller resolved to ids).", 10_000)
    max_json_bytes: int = setting(
        "Largest JSON body (search, upsert) of the FAISS service; 413 beyond.",
        4 * 1024 * 1024)
    max_upload_bytes: int = setting(
        "Largest uploaded `.npz` version on the wire (1M × 64 float32 ≈ 256 MB + ids).",
        1024 * 1024 * 1024)
    max_npz_bytes: int = setting(
        "Largest uncompressed size of a version `.npz` the FAISS service loads (read from "
        "the zip directory and `.npy` headers before anything is allocated); 400 beyond.",
        1024 * 1024 * 1024)
    keep_versions: int = setting(
        "Saved FAISS index versions kept on disk besides the serving one.", 3)
    omp_threads: int = setting(
        "OpenMP threads of a search (set on the event-loop thread at start-up); version "
        "builds run in worker threads and use every core.", 1)
    metrics_suffix: str = setting("statsd prefix suffix (`{RECSYS_STATSD_PREFIX}.faiss.*`).",
                                  "faiss")

    @classmethod
    def from_env(cls, settings: Settings | None = None, env: Mapping[str, str] | None = None,
                 **overrides: Any) -> FaissConfig:
        """Defaults derived from ``settings``, then ``RECSYS_FAISS_*`` /
        ``RECSYS_FAISS_INDEX_*`` from ``env`` (``os.environ``), then ``overrides`` (which
        may hold :class:`IndexSpec` fields, or a whole ``spec``).

        >>> c = FaissConfig.from_env(env={"RECSYS_FAISS_INDEX_KIND": "hnsw",
        ...                               "RECSYS_FAISS_KEEP_VERSIONS": "5"}, dim=32)
        >>> c.spec.kind, c.spec.dim, c.keep_versions
        ('hnsw', 32, 5)
        """
        settings = settings if settings is not None else Settings.from_env(env)
        spec_names = {f.name for f in dataclasses.fields(IndexSpec)}
        spec_over = {k: overrides.pop(k) for k in list(overrides) if k in spec_names}
        spec = overrides.pop("spec", None) or IndexSpec(
            **{**env_values(IndexSpec, env), **spec_over})
        values: dict[str, Any] = {
            "api_key": settings.faiss_api_key,
            "data_dir": settings.local_dir / "faiss",
            "load_roots": (settings.model_dir, settings.local_dir),
            **env_values(cls, env),
            **overrides,
        }
        return cls(spec=spec, **values)
