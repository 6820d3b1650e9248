"""Checkpoints: identical scores after a round trip; damage is reported, never fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.synthetic import SyntheticConfig, SyntheticGenerator
from models.base import Recommender
from models.checkpoint import (
    CheckpointError,
    latest_version,
    list_versions,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from models.cooc import Cooc
from models.events import EventBatch
from models.gmf import GMF
from models.hybrid import SessionCooc
from models.popularity import Popularity
from models.training import fit
from models.two_tower import TwoTower


def trained(kind: str) -> Recommender:
    gen = SyntheticGenerator(SyntheticConfig(n_users=60, n_items=40, seed=5))
    model: Recommender = {"gmf": GMF(dim=8), "two_tower": TwoTower(dim=8, n_buckets=32),
                          "popularity": Popularity(), "cooc": Cooc(neighbours=8),
                          "hybrid": SessionCooc(dim=8, n_buckets=32, cooc_neighbours=8)}[kind]
    for item in gen.items().values():
        model.upsert_item(item.item_id, item.attributes)
    fit(model, EventBatch.from_interactions(gen.interactions(2_000)), epochs=2)
    return model


@pytest.mark.parametrize("kind", ["gmf", "two_tower", "popularity", "cooc", "hybrid"])
def test_round_trip_restores_identical_scores(kind: str, tmp_path: Path) -> None:
    model = trained(kind)
    version = save_checkpoint(model, tmp_path)
    assert model.version == version
    restored = load_checkpoint(tmp_path)
    assert restored.version == version and type(restored) is type(model)
    users = model.user_ids.ids[:10]
    items = model.item_ids.ids
    for u in users:
        np.testing.assert_array_equal(model.score([u] * len(items), items),
                                      restored.score([u] * len(items), items))
        assert model.recent_history(u) == restored.recent_history(u)
    np.testing.assert_array_equal(model.recommend(users, 5)[0], restored.recommend(users, 5)[0])
    for name, tensor in model.state_tensors().items():
        assert torch.equal(tensor, restored.state_tensors()[name]), name
    meta = read_meta(tmp_path)
    assert meta["events_seen"] == model.events_seen == restored.events_seen
    assert meta["data_range"]["min_ts_ms"] <= meta["data_range"]["max_ts_ms"]
    assert meta["created_at"] and meta["kind"] == kind


def test_restored_model_keeps_learning_and_growing(tmp_path: Path) -> None:
    model = trained("gmf")
    save_checkpoint(model, tmp_path)
    restored = load_checkpoint(tmp_path)
    restored.learn_many(EventBatch.of(["new-user"], ["new-item"]))
    assert restored.knows_user("new-user")
    assert len(restored.item_ids) == len(model.item_ids) + 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_corrupt_checkpoint_is_rejected_and_previous_stays_loadable(
        damage: str, tmp_path: Path) -> None:
    model = trained("gmf")
    first = save_checkpoint(model, tmp_path)
    model.learn_many(EventBatch.of(["u1"], ["i1"]))
    second = save_checkpoint(model, tmp_path)
    assert latest_version(tmp_path) == second and list_versions(tmp_path) == [first, second]
    target = tmp_path / second / ("meta.json" if damage == "meta" else "tensors.pt")
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{not json")
    with pytest.raises(CheckpointError, match=second):
        load_checkpoint(tmp_path)
    previous = load_checkpoint(tmp_path, first)
    assert previous.version == first and previous.events_seen == model.events_seen - 1


def test_partial_save_leaves_latest_untouched(tmp_path: Path) -> None:
    model = trained("popularity")
    first = save_checkpoint(model, tmp_path)
    (tmp_path / ".tmp-crashed").mkdir()  # a save that died before its rename
    (tmp_path / ".tmp-crashed" / "tensors.pt").write_bytes(b"partial")
    assert latest_version(tmp_path) == first
    assert list_versions(tmp_path) == [first]
    assert load_checkpoint(tmp_path).version == first


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_old_versions_are_pruned(tmp_path: Path) -> None:
    model = Popularity()
    model.learn_many(EventBatch.of(["a"], ["x"]))
    versions = [save_checkpoint(model, tmp_path, keep=2) for _ in range(4)]
    assert list_versions(tmp_path) == versions[-2:]
    assert len(set(versions)) == 4 and versions == sorted(versions)


def test_checkpoint_files_hold_no_pickled_objects(tmp_path: Path) -> None:
    version = save_checkpoint(trained("two_tower"), tmp_path)
    tensors = torch.load(tmp_path / version / "tensors.pt", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    with np.load(tmp_path / version / "arrays.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
