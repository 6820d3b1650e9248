"""Evaluation metrics and protocol splits against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datasets.types import Interactions
from models.evaluation import (
    FullSplit,
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


def test_loo_on_popularity_hand_example() -> None:
    """Every user has exactly two untouched items, so the "sampled" negatives are all of
    them and the figures follow by hand. Training counts after holding out each user's
    latest item: p 4, q 2, r 1, s 1, t 0 (never trained: unscorable, ranks last).

    user  held out (count)  negatives (counts)  rank  HR@2  NDCG@2
    1     r (1)             s (1), t (-)        1     1     1/log2(3)   (tie s = r ranks above)
    2     s (1)             r (1), t (-)        1     1     1/log2(3)
    3     q (2)             s (1), t (-)        0     1     1
    4     t (-)             q (2), r (1)        2     0     0
    """
    rows = [("1", "p", 1), ("1", "q", 2), ("1", "r", 3),
            ("2", "p", 1), ("2", "q", 2), ("2", "s", 3),
            ("3", "p", 1), ("3", "r", 2), ("3", "q", 3),
            ("4", "p", 1), ("4", "s", 2), ("4", "t", 3)]
    split = loo_split(log(rows), n_negatives=2)
    assert split.held_out == ["r", "s", "q", "t"]
    assert [sorted(n) for n in split.negatives] == [["s", "t"], ["r", "t"], ["s", "t"],
                                                    ["q", "r"]]
    model = Popularity()
    fit(model, EventBatch.from_interactions(split.train))
    loo = evaluate_loo(model, split, k=2)
    assert loo["hr@2"] == pytest.approx(3 / 4)
    assert loo["ndcg@2"] == pytest.approx((2 / math.log2(3) + 1) / 4)


def test_full_on_popularity_hand_example() -> None:
    """A fixed split (``full_split``'s permutation is tested above) so the lists follow by
    hand. Training counts: p 5, q 4, r 3, s 2, t 1; seen items are excluded, k = 2.

    user  seen       top-2   test     P@2  R@2  NDCG@2                       MAP@2
    1     p q r      s t     {t}      1/2  1    (1/log2 3) / 1              (1/2) / 1
    2     p q        r s     {s, t}   1/2  1/2  (1/log2 3) / (1 + 1/log2 3) (1/2) / 2
    3     p s        q r     {q}      1/2  1    1                           1
    """
    train = [("1", "p", 1), ("1", "q", 2), ("1", "r", 3),
             ("2", "p", 1), ("2", "q", 2),
             ("3", "p", 1), ("3", "s", 2),
             ("4", "p", 1), ("4", "q", 2), ("4", "r", 3),
             ("5", "p", 1), ("5", "q", 2), ("5", "r", 3), ("5", "s", 4), ("5", "t", 5)]
    split = FullSplit(log(train), {"1": {"t"}, "2": {"s", "t"}, "3": {"q"}})
    model = Popularity()
    fit(model, EventBatch.from_interactions(split.train))
    full = evaluate_full(model, split, k=2)
    inv = 1 / math.log2(3)
    assert full["precision@2"] == pytest.approx(1 / 2)
    assert full["recall@2"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert full["ndcg@2"] == pytest.approx((inv + inv / (1 + inv) + 1) / 3)
    assert full["map@2"] == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)


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


def test_evaluate_defaults_to_the_product_model_and_five_clicks() -> None:
    from models.training import PRODUCT_MODEL
    from scripts import evaluate

    args = evaluate.parse_args(["--protocol", "responsiveness"])
    assert args.model == PRODUCT_MODEL and args.clicks == 5
    assert evaluate.parse_args(["--protocol", "loo", "--model", "cooc"]).model == "cooc"
