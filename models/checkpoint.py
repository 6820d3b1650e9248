"""Versioned, atomic checkpoints without pickle.

Layout of a checkpoint directory::

    <dir>/latest                 # text file: the current version id
    <dir>/<version>/meta.json    # kind, hyperparameters, metadata, SHA-256 of each file
    <dir>/<version>/state.json   # id maps (row order) and counters
    <dir>/<version>/tensors.pt   # parameters + optimiser state (torch.save of tensors)
    <dir>/<version>/arrays.npz   # histories, seen items, counts (numpy, no pickle)

A version is written into a temporary folder, fsynced, then renamed into place; only
then is ``latest`` replaced (write temp + ``os.replace``). A crash at any point leaves
the previous version intact and ``latest`` pointing at it. Loading verifies checksums
and uses ``torch.load(weights_only=True)`` / ``np.load(allow_pickle=False)``, so a
damaged or hostile file raises :class:`CheckpointError` instead of running code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import RecsysError
from models.base import Recommender

FORMAT = 1
FILES = ("state.json", "tensors.pt", "arrays.npz")
LATEST = "latest"


class CheckpointError(RecsysError):
    """A checkpoint is missing, partial or corrupt; the message says which and why."""


def model_classes() -> dict[str, type[Recommender]]:
    """Model kinds a checkpoint may name (no arbitrary classes: no pickle-like loading)."""
    from models.cooc import Cooc
    from models.gmf import GMF
    from models.hybrid import SessionCooc
    from models.popularity import Popularity
    from models.two_tower import SessionTwoTower, TwoTower

    return {cls.kind: cls for cls in (GMF, TwoTower, SessionTwoTower, SessionCooc,
                                      Popularity, Cooc)}


def new_version() -> str:
    """Sortable, unique version id: UTC time to the microsecond plus a random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(model: Recommender, directory: str | Path, keep: int = 5,
                    extra: dict[str, Any] | None = None) -> str:
    """Write ``model`` as a new version under ``directory``; return the version id.

    Sets ``model.version``. Keeps the newest ``keep`` versions. ``extra`` is stored in
    the metadata as-is (e.g. the data source).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    version = new_version()
    blobs: dict[str, bytes] = {}
    blobs["state.json"] = json.dumps(model.state_json()).encode()
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in model.state_tensors().items()}, buf)
    blobs["tensors.pt"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **model.state_arrays())
    blobs["arrays.npz"] = buf.getvalue()
    ts_range = model.ts_range
    meta = {
        "format": FORMAT,
        "version": version,
        "kind": model.kind,
        "params": model.get_params(),
        "dim": model.vector_dim,  # what the FAISS index needs (params hold ``dim``)
        "created_at": datetime.now(UTC).isoformat(),
        "events_seen": model.events_seen,
        "n_users": len(model.user_ids),
        "n_items": len(model.item_ids),
        "data_range": {"min_ts_ms": ts_range[0] if ts_range else None,
                       "max_ts_ms": ts_range[1] if ts_range else None},
        "files": {name: _sha256(data) for name, data in blobs.items()},
        "extra": extra or {},
    }
    tmp = directory / f".tmp-{version}"
    tmp.mkdir()
    try:
        for name, data in blobs.items():
            _write(tmp / name, data)
        _write(tmp / "meta.json", json.dumps(meta, indent=2).encode())
        _fsync_dir(tmp)
        os.replace(tmp, directory / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = directory / f".{LATEST}.tmp"
    _write(pointer, version.encode())
    os.replace(pointer, directory / LATEST)
    _fsync_dir(directory)
    model.version = version
    _prune(directory, keep, version)
    return version


def list_versions(directory: str | Path) -> list[str]:
    """Complete-looking versions (have ``meta.json``), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").exists())


def latest_version(directory: str | Path) -> str:
    """The version ``latest`` points at."""
    pointer = Path(directory) / LATEST
    try:
        version = pointer.read_text().strip()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint in {directory}: {pointer} is missing") from None
    if not version or "/" in version or version.startswith("."):
        raise CheckpointError(f"{pointer} holds an invalid version id {version!r}")
    return version


def read_meta(directory: str | Path, version: str | None = None) -> dict[str, Any]:
    """Metadata of a version (``latest`` if ``None``) without loading tensors."""
    version = version or latest_version(directory)
    path = Path(directory) / version / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {version} in {directory} is missing "
                              f"meta.json (partial or deleted)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {version}: meta.json is corrupt ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {version}: unsupported format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def load_checkpoint(directory: str | Path, version: str | None = None) -> Recommender:
    """Rebuild the model saved as ``version`` (the ``latest`` one if ``None``).

    Raises :class:`CheckpointError` naming the version and the damaged part if any
    file is missing, fails its checksum or does not parse; other versions are untouched
    and stay loadable.
    """
    directory = Path(directory)
    version = version or latest_version(directory)
    meta = read_meta(directory, version)
    folder = directory / version
    blobs: dict[str, bytes] = {}
    for name in FILES:
        try:
            data = (folder / name).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {version}: {name} is missing") from None
        if _sha256(data) != meta["files"].get(name):
            raise CheckpointError(f"checkpoint {version}: {name} fails its SHA-256 check "
                                  f"(truncated or modified)")
        blobs[name] = data
    classes = model_classes()
    cls = classes.get(meta.get("kind", ""))
    if cls is None:
        raise CheckpointError(f"checkpoint {version}: unknown model kind {meta.get('kind')!r}")
    try:
        model = cls(**meta["params"])
        model.load_state_json(json.loads(blobs["state.json"]))
        tensors = torch.load(io.BytesIO(blobs["tensors.pt"]), weights_only=True)
        model.load_state_tensors(tensors)
        with np.load(io.BytesIO(blobs["arrays.npz"]), allow_pickle=False) as npz:
            model.load_state_arrays({k: npz[k] for k in npz.files})
    except CheckpointError:
        raise
    except Exception as exc:  # any parse/shape failure is a bad checkpoint, said once
        raise CheckpointError(f"checkpoint {version}: cannot restore "
                              f"({type(exc).__name__}: {exc})") from exc
    model.version = version
    return model


def _prune(directory: Path, keep: int, current: str) -> None:
    versions = list_versions(directory)
    for old in versions[: max(0, len(versions) - keep)]:
        if old != current:
            shutil.rmtree(directory / old, ignore_errors=True)
