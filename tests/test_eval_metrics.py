"""Evaluation metrics and protocol splits against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datasets.types import Interactions
from models.evaluation import (
    evaluate_full,
    evaluate_loo,
    full_split,
    hit_and_ndcg,
    id_order,
    loo_split,
    prequential,
    rank_of_positive,
    topk_metrics,
)
from models.events import EventBatch
from models.popularity import Popularity
from models.training import fit


def log(rows: list[tuple[str, str, int]]) -> Interactions:
    users, items, ts = zip(*rows, strict=True)
    return Interactions(np.array(users), np.array(items), np.ones(len(rows), np.float32),
                        np.array(ts, dtype=np.int64))


def test_rank_counts_ties_against_the_positive() -> None:
    assert rank_of_positive(0.5, np.array([0.1, 0.2])) == 0
    assert rank_of_positive(0.5, np.array([0.5, 0.9, 0.1])) == 2
    assert rank_of_positive(float("nan"), np.array([float("nan"), 0.0])) == 2
    assert rank_of_positive(0.0, np.array([float("nan")])) == 0


def test_hit_and_ndcg_hand_values() -> None:
    assert hit_and_ndcg(0) == (1.0, 1.0)
    assert hit_and_ndcg(1) == (1.0, pytest.approx(1 / math.log2(3)))
    assert hit_and_ndcg(9) == (1.0, pytest.approx(1 / math.log2(11)))
    assert hit_and_ndcg(10) == (0.0, 0.0)


def test_topk_metrics_hand_example() -> None:
    # relevant {a, b, c, d}; list hits at positions 1 and 3 of k=4
    m = topk_metrics(["a", "x", "b", "y"], {"a", "b", "c", "d"}, k=4)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 4)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = sum(1 / math.log2(j + 2) for j in range(4))
    assert m["ndcg"] == pytest.approx(dcg / idcg)
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 4)
    # ideal DCG over min(|relevant|, k): one relevant item found first is perfect
    one = topk_metrics(["a", "x", "y"], {"a"}, k=3)
    assert one["ndcg"] == 1.0 and one["map"] == 1.0 and one["precision"] == pytest.approx(1 / 3)


def test_ids_sort_numerically() -> None:
    ids = np.array(["10", "9", "100", "1"])
    assert ids[id_order(ids)].tolist() == ["1", "9", "10", "100"]
    assert np.array(["b", "a"])[id_order(np.array(["b", "a"]))].tolist() == ["a", "b"]


def test_loo_holds_out_latest_with_item_id_tiebreak_and_samples_unseen() -> None:
    rows = [("1", "5", 1), ("1", "3", 2), ("1", "20", 3), ("1", "4", 3),
            ("2", "5", 1), ("2", "6", 9)]
    rows += [("3", str(i), i) for i in range(100, 205)]  # gives user 1, 2 enough candidates
    split = loo_split(log(rows), n_negatives=5)
    assert split.users == ["1", "2", "3"]
    assert split.held_out[:2] == ["20", "6"]  # ts tie 3: item 20 > 4 numerically
    assert len(split.train) == len(rows) - 3
    assert not {"5", "3", "20", "4"} & set(split.negatives[0])
    assert len(set(split.negatives[0])) == 5
    again = loo_split(log(rows), n_negatives=5)
    assert again.negatives == split.negatives


def test_full_split_sizes_and_determinism() -> None:
    rows = [("1", str(i), i) for i in range(10)] + [("2", "a", 1)] + [("3", "x", 1), ("3", "y", 2)]
    split = full_split(log(rows))
    train_counts = {u: int((split.train.users == u).sum()) for u in ["1", "2", "3"]}
    assert train_counts == {"1": 7, "2": 1, "3": 1}  # max(1, floor(0.75 n))
    assert set(split.test) == {"1", "3"} and len(split.test["1"]) == 3
    assert full_split(log(rows)).test == split.test


def test_protocols_on_popularity_hand_example() -> None:
    # items: p is popular, q second; each user's held-out/test is easy to reason about
    rows = []
    for u in range(1, 5):
        rows += [(str(u), "p", 1), (str(u), "q", 2), (str(u), f"o{u}", 3)]
    rows += [(str(u), f"z{u}{j}", 10 + j) for u in range(5, 7) for j in range(60)]
    split = loo_split(log(rows), n_negatives=3)
    model = Popularity()
    fit(model, EventBatch.from_interactions(split.train))
    loo = evaluate_loo(model, split)
    assert set(loo) == {"hr@10", "ndcg@10"} and 0.0 <= loo["hr@10"] <= 1.0
    fs = full_split(log(rows))
    model = Popularity()
    fit(model, EventBatch.from_interactions(fs.train))
    full = evaluate_full(model, fs)
    assert set(full) == {"precision@10", "recall@10", "ndcg@10", "map@10"}


def test_prequential_is_test_then_learn() -> None:
    # stream: a:x (boot), b:x -> b unknown (not evaluated), a:y miss, c:y (unknown),
    # b:y -> y is top for b (x seen) : hit
    rows = [("a", "x", 1), ("b", "x", 2), ("a", "y", 3), ("c", "y", 4), ("b", "y", 5)]
    out = prequential(Popularity(), log(rows), lambda m, ev: fit(m, ev),
                      bootstrap_fraction=0.2, k=1)
    # evaluated: a:y (top-1 for a with x seen: nothing else known -> miss), b:y (hit)
    assert out["evaluated"] == 2
    assert out["recall@1"] == pytest.approx(0.5)
    assert out["learn_events_per_s"] > 0
