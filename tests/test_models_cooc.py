"""Co-occurrence: exact against a plain reference while unbounded, bounded, decayed,
restored from checkpoints, and a click moves the list at once; the genre-shift
protocol measures a shift where there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import load_checkpoint, save_checkpoint
from models.cooc import Cooc, CoOccurrence
from models.evaluation import responsiveness
from models.events import EventBatch
from models.history import RecentHistory


def reference_pairs(users: list[int], items: list[int], window: int, recency: float
                    ) -> dict[tuple[int, int], float]:
    """Plain Python: each event pairs with the user's previous ``window`` events."""
    past: dict[int, list[int]] = {}
    out: dict[tuple[int, int], float] = {}
    for u, i in zip(users, items, strict=True):
        for age, h in enumerate(reversed(past.get(u, [])[-window:])):
            if h != i:
                for a, b in ((h, i), (i, h)):
                    out[(a, b)] = out.get((a, b), 0.0) + recency ** age
        past.setdefault(u, []).append(i)
    return out


def test_unbounded_counts_match_the_reference_across_batches() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 6, 400), rng.integers(0, 15, 400)
    c, h = CoOccurrence(neighbours=15, window=4, recency=0.9), RecentHistory(size=8)
    c.resize(15)
    h.resize(6)
    for start in range(0, 400, 37):  # batches with several events of one user
        u, i = users[start: start + 37], items[start: start + 37]
        c.update(u, i, np.ones(len(u), np.float32), np.zeros(len(u), np.int64), h)
        h.append(u, i)
    ref = reference_pairs(users.tolist(), items.tolist(), 4, 0.9)
    got = {(a, int(b)): float(w) for a in range(15)
           for b, w in zip(c.nbr[a], c.wt[a], strict=True) if b >= 0}
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5)
    np.testing.assert_array_equal(c.cnt[:15], np.bincount(items, minlength=15))


def test_neighbours_are_bounded_and_keep_the_frequent_partner() -> None:
    c, h = CoOccurrence(neighbours=3, window=1, recency=1.0), RecentHistory(size=2)
    c.resize(50)
    h.resize(100)
    # item 0 co-occurs with item 1 forty times and once with each of 2..48
    for u in range(40):
        c.update(np.array([u, u]), np.array([0, 1]), np.ones(2, np.float32),
                 np.zeros(2, np.int64), h)
    for j, u in enumerate(range(40, 87)):
        c.update(np.array([u, u]), np.array([0, 2 + j]), np.ones(2, np.float32),
                 np.zeros(2, np.int64), h)
    assert c.nbr.shape[1] == 3
    rows, _ = c.similar(0, 3)
    assert 1 in rows.tolist() and (c.nbr[0] >= 0).sum() == 3


def test_old_co_occurrences_fade_in_event_time() -> None:
    day = 86_400_000
    c, h = CoOccurrence(neighbours=4, window=1, half_life_days=1.0), RecentHistory(size=2)
    c.resize(3)
    h.resize(2)
    c.update(np.array([0, 0]), np.array([0, 1]), np.ones(2, np.float32),
             np.array([0, 0]), h)
    c.update(np.array([1, 1]), np.array([0, 2]), np.ones(2, np.float32),
             np.array([2 * day, 2 * day]), h)
    w = dict(zip(c.nbr[0].tolist(), c.wt[0].tolist(), strict=True))
    assert w[2] == pytest.approx(4 * w[1])  # two half-lives later: four times the weight
    # a jump of decades rescales instead of overflowing
    c.update(np.array([0, 0]), np.array([1, 2]), np.ones(2, np.float32),
             np.array([40 * 365 * day] * 2), h)
    assert np.isfinite(c.wt[:3]).all() and np.isfinite(c.cnt[:3]).all()
    assert c.similar(1, 1)[0].tolist() == [2]


def test_a_click_moves_the_list_at_once_and_survives_a_checkpoint(tmp_path: Path) -> None:
    model = Cooc(neighbours=8, window=3)
    # others watch x then y, and p then q
    model.learn_many(EventBatch.of(["a", "a", "b", "b", "c", "c"],
                                   ["x", "y", "x", "y", "p", "q"]))
    model.learn_many(EventBatch.of(["u"], ["p"]))
    assert model.recommend(["u"], 1)[0][0, 0] == "q"
    model.learn_many(EventBatch.of(["u"], ["x"]))  # the click, no other training
    assert model.recommend(["u"], 1)[0][0, 0] == "y"
    save_checkpoint(model, tmp_path)
    restored = load_checkpoint(tmp_path)
    assert isinstance(restored, Cooc)
    ids, sims = model.similar_items("x", 2)
    assert ids[0] == "y"
    assert restored.similar_items("x", 2)[0] == ids
    np.testing.assert_array_equal(restored.similar_items("x", 2)[1], sims)
    assert restored.recommend(["u"], 3)[0].tolist() == model.recommend(["u"], 3)[0].tolist()


def test_responsiveness_sees_the_shift_of_a_model_that_follows_clicks() -> None:
    model = Cooc(neighbours=16, window=3, popularity_weight=0.0)
    genres = {f"g{j}": ["G"] for j in range(4)} | {f"o{j}": ["O"] for j in range(8)}
    # u1 and u2 watch the G titles together (and one O title), w watches O titles then
    # one G title; "new" knows only O titles, so only "new" is measured
    log = (["u1"] * 5 + ["u2"] * 5, ([f"g{j}" for j in range(4)] + ["o7"]) * 2)
    model.learn_many(EventBatch.of(*log))
    model.learn_many(EventBatch.of(["w"] * 4, ["o0", "o3", "o4", "g3"]))
    model.learn_many(EventBatch.of(["new"] * 3, ["o0", "o1", "o2"]))
    popularity = {"g0": 9.0, "g1": 8.0}
    out = responsiveness(model, genres, popularity, clicks=2, k=2, min_titles=4)
    assert out["users"] == 1.0  # the others have touched both genres
    assert out["genre_share_before"] == 0.0  # o3, o4 follow o0
    assert out["genre_share_after"] == 1.0  # g2, g3 follow the two clicks
    assert out["catalogue_share"] == pytest.approx(4 / 12)
    assert model.recent_history("new") == ["o0", "o1", "o2"]  # measured on a copy
