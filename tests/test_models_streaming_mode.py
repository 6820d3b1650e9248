"""Streaming mode: no unbounded seen sets; recommendations still skip recent items."""

from __future__ import annotations

from models.events import EventBatch
from models.gmf import GMF


def test_stop_tracking_seen_keeps_memory_bounded_and_excludes_recent_history() -> None:
    model = GMF(dim=8, negatives=4, history_size=3, seed=1)
    model.stop_tracking_seen()
    items = [f"i{j}" for j in range(10)]
    model.learn_many(EventBatch.of(["u"] * 10, items, ts_ms=1))
    assert model.seen.sets == {}  # nothing kept per user beyond the bounded history
    recent = set(model.recent_history("u"))
    assert recent == {"i7", "i8", "i9"}
    ids, _ = model.recommend(["u"], k=7, exclude_seen=True)
    assert not recent & set(ids[0].tolist())
    assert len([i for i in ids[0].tolist() if i]) == 7


def test_tracking_seen_excludes_everything_seen() -> None:
    model = GMF(dim=8, negatives=4, history_size=3, seed=1)
    items = [f"i{j}" for j in range(10)] + ["other"]
    model.learn_many(EventBatch.of(["u"] * 10 + ["v"], items, ts_ms=1))
    ids, _ = model.recommend(["u"], k=5, exclude_seen=True)
    assert [i for i in ids[0].tolist() if i] == ["other"]
