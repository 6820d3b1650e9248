"""Where the worker's model comes from and goes to: checkpoint folders, loading.

The worker restores its own latest checkpoint, else the bootstrap's, else starts a
fresh model; scripts (bootstrap, publish, demo, app manager) use the same paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.settings import Settings
from models.base import Recommender
from models.checkpoint import (
    CheckpointError,
    latest_version,
    load_checkpoint,
    model_classes,
    read_meta,
)

log = logging.getLogger(__name__)


def worker_checkpoint_dir(settings: Settings) -> Path:
    return Path(settings.model_dir) / "worker"


def ranker_dir(settings: Settings) -> Path:
    """Where rankers are saved (``<version>.json``, ``latest``): the worker's and the
    bootstrap's (``streams.ranker_training.save_ranker``)."""
    return Path(settings.model_dir) / "rankers"


def bootstrap_checkpoint_dir(settings: Settings) -> Path:
    """Where ``python -m scripts.bootstrap`` writes its checkpoints by default."""
    return Path(settings.model_dir) / "checkpoints"


def load_model(settings: Settings) -> Recommender:
    """The worker's latest checkpoint, else the bootstrap model, else a fresh model."""
    for folder in (worker_checkpoint_dir(settings), bootstrap_checkpoint_dir(settings)):
        try:
            latest_version(folder)
        except (CheckpointError, FileNotFoundError):
            continue
        model = load_checkpoint(folder)
        log.info("restored model %s from %s", model.version, folder)
        return model
    cls = model_classes()[settings.worker_model]
    log.info("no checkpoint found: starting a fresh %s model", settings.worker_model)
    # the model's ring keeps its own (tuned) length: the stored history
    # (``worker_history_size``) must only be at least as long, as it is loaded from it
    return cls()


def model_dim(settings: Settings) -> int:
    """Retrieval-vector dimension the worker will export (the FAISS index must match)."""
    for folder in (worker_checkpoint_dir(settings), bootstrap_checkpoint_dir(settings)):
        try:
            meta = read_meta(folder)
        except (CheckpointError, FileNotFoundError):
            continue
        dim = meta.get("dim")
        if dim:
            return int(dim)
        return load_checkpoint(folder).vector_dim
    return model_classes()[settings.worker_model]().vector_dim
