"""The compiled kernels of ``models.kernels`` against plain Python/torch references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import kernels
from models.history import RecentHistory
from models.ids import IdMap
from models.sampler import NegativeSampler


def random_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Ids of mixed lengths and scripts (ASCII, accents, CJK, emoji)."""
    alphabet = list("abcxyz0123456789-_:") + ["é", "ß", "字", "🙂"]
    return ["".join(rng.choice(alphabet, size=rng.integers(1, 40))) for _ in range(n)]


def test_id_map_matches_a_dict_through_growth_and_repeats() -> None:
    rng = np.random.default_rng(0)
    pool = list(dict.fromkeys(random_ids(rng, 30_000)))
    m, ref = IdMap(), {}
    for _ in range(40):  # batches with repeats, old and new ids, many rehashes
        batch = [pool[j] for j in rng.integers(0, len(pool), 700)]
        for key in batch:
            ref.setdefault(key, len(ref))
        assert m.add(batch).tolist() == [ref[k] for k in batch]
    assert len(m) == len(ref) and m.ids == list(ref)
    assert m.lookup(pool).tolist() == [ref.get(k, -1) for k in pool]
    assert m.lookup(["never-seen", pool[0] + "x"]).tolist() == [-1, -1]


def test_id_map_does_not_depend_on_the_batch_width() -> None:
    m = IdMap()
    m.add(np.array(["a1", "b2"]))  # numpy width 2
    wide = np.array(["b2", "x" * 300, "a1"])  # width 300: padded with zeros
    assert m.lookup(wide).tolist() == [1, -1, 0]
    assert m.add(wide).tolist() == [1, 2, 0]
    assert IdMap.from_json(m.to_json()).lookup(["x" * 300, "a1"]).tolist() == [2, 0]


def test_id_map_rejects_duplicate_saved_ids() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        IdMap.from_json(["a", "b", "a"])


def reference_adagrad(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                      grads: torch.Tensor, lr: float, decay: float, eps: float) -> None:
    uniq, inverse = torch.unique(rows, return_inverse=True)
    g = torch.zeros(len(uniq), grads.shape[1]).index_add_(0, inverse, grads)
    acc = accum[uniq] * decay + g.square().mean(1)
    accum[uniq] = acc
    weight[uniq] -= lr * g / torch.sqrt(acc + eps * eps).unsqueeze(1)


@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_rowwise_adagrad_sums_repeats_like_the_torch_reference(decay: float) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(500, 16, generator=gen)
    accum = torch.rand(500, generator=gen)
    rows = torch.randint(0, 60, (300,), generator=gen)  # many repeats
    grads = torch.randn(300, 16, generator=gen)
    w_ref, a_ref = weight.clone(), accum.clone()
    reference_adagrad(w_ref, a_ref, rows, grads, 0.05, decay, 1e-8)
    kernels.rowwise_adagrad(weight.numpy(), accum.numpy(), rows.numpy(), grads.numpy(),
                            0.05, decay, 1e-8)
    torch.testing.assert_close(accum, a_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight, w_ref, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(500, dtype=torch.bool)
    untouched[rows] = False
    assert untouched.any() and torch.equal(weight[untouched], w_ref[untouched])


def test_group_rows_keeps_first_appearance_order() -> None:
    rows = np.array([7, 3, 7, 9, 3, 3, 1_000_000_007])
    distinct, group = kernels.group_rows(rows)
    assert distinct.tolist() == [7, 3, 9, 1_000_000_007]
    assert group.tolist() == [0, 1, 0, 2, 1, 1, 3]


def test_ring_append_matches_a_per_event_reference() -> None:
    rng = np.random.default_rng(1)
    h = RecentHistory(size=4, capacity=8)
    h.resize(8)
    ref: dict[int, list[int]] = {u: [] for u in range(8)}
    for _ in range(20):
        users = rng.integers(0, 8, 13)
        items = rng.integers(0, 1000, 13)
        h.append(users, items, (items % 7).astype(np.float32))
        for u, i in zip(users.tolist(), items.tolist(), strict=True):
            ref[u] = (ref[u] + [i])[-4:]
    rows, weights = h.ordered(np.arange(8))
    for u in range(8):
        assert h.of(u).tolist() == ref[u]
        assert rows[u, : len(ref[u])].tolist() == ref[u]
        assert (rows[u, len(ref[u]):] == -1).all()
        assert weights[u, : len(ref[u])].tolist() == [i % 7 for i in ref[u]]


def test_mask_hits_masks_exactly_the_positives_among_negatives() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(50, 30, generator=gen)
    neg_rows = torch.randint(0, 20, (30,), generator=gen)  # repeats among negatives
    pos_rows = torch.randint(0, 25, (50,), generator=gen)
    expected = logits.masked_fill(neg_rows.unsqueeze(0) == pos_rows.unsqueeze(1), -torch.inf)
    assert torch.isinf(expected).any()
    kernels.mask_hits(logits.numpy(), neg_rows.numpy(), pos_rows.numpy())
    assert torch.equal(logits, expected)


def test_popularity_pool_follows_the_current_distribution() -> None:
    s = NegativeSampler("popularity", alpha=1.0, refresh_every=1000, seed=3)
    s.resize(4)
    s.observe(np.repeat([0, 1], [599, 199]))  # weights 600, 200, 1, 1
    draws = torch.cat([s.sample(256) for _ in range(200)]).numpy()
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, np.array([600, 200, 1, 1]) / 802, atol=0.01)
    s.observe(np.repeat([3], 3000))  # the counts flip: the pool drawn before is dropped
    draws = torch.cat([s.sample(256) for _ in range(200)]).numpy()
    assert np.bincount(draws, minlength=4)[3] / len(draws) > 0.7


def test_kernels_refuse_rows_outside_the_tables() -> None:
    """Compiled code does not bounds-check: the kernels must, or a bad row would write
    outside the table instead of failing."""
    weight, accum = np.zeros((4, 2), np.float32), np.zeros(4, np.float32)
    with pytest.raises(IndexError, match="out of range"):
        kernels.rowwise_adagrad(weight, accum, np.array([1, 4]), np.ones((2, 2), np.float32),
                                0.1, 1.0, 1e-8)
    with pytest.raises(IndexError, match="out of range"):
        kernels.ring_append_weighted(np.zeros((2, 3), np.int32),
                                     np.zeros((2, 3), np.float32), np.zeros(2, np.int64),
                                     np.array([0, -1]), np.array([5, 6], np.int32),
                                     np.ones(2, np.float32))


def _adagrad_args(**override: np.ndarray) -> dict[str, np.ndarray]:
    """Consistent arguments of ``rowwise_adagrad`` (4 rows of dim 3, 2 updates)."""
    args = {"weight": np.zeros((4, 3), np.float32), "accum": np.zeros(4, np.float32),
            "rows": np.array([0, 2]), "grads": np.ones((2, 3), np.float32)}
    return {**args, **override}


@pytest.mark.parametrize(("override", "message"), [
    ({"grads": np.ones((2, 2), np.float32)}, "grads has 2 columns, weight has 3"),
    ({"grads": np.ones((1, 3), np.float32)}, "grads has 1 rows, rows has 2 entries"),
    ({"accum": np.zeros(5, np.float32)}, "accum has 5 rows, weight has 4"),
    ({"weight": np.zeros(12, np.float32)}, r"weight must be 2-D, got shape \(12,\)"),
    ({"rows": np.array([[0, 2]])}, r"rows must be 1-D, got shape \(1, 2\)"),
    ({"accum": np.zeros((4, 1), np.float32)}, r"accum must be 1-D, got shape \(4, 1\)"),
])
def test_rowwise_adagrad_rejects_inconsistent_shapes_before_touching_memory(
        override: dict[str, np.ndarray], message: str) -> None:
    args = _adagrad_args(**override)
    before = args["weight"].copy(), args["accum"].copy()
    with pytest.raises(ValueError, match=f"^rowwise_adagrad: {message}$"):
        kernels.rowwise_adagrad(args["weight"], args["accum"], args["rows"], args["grads"],
                                0.1, 1.0, 1e-8)
    assert np.array_equal(args["weight"], before[0]) and np.array_equal(args["accum"], before[1])


def test_rowwise_adagrad_accepts_consistent_shapes() -> None:
    """The guard of the test above is not a blanket refusal: the consistent call updates
    exactly the rows named."""
    args = _adagrad_args()
    kernels.rowwise_adagrad(args["weight"], args["accum"], args["rows"], args["grads"],
                            0.1, 1.0, 1e-8)
    assert (args["weight"][[0, 2]] < 0).all() and (args["weight"][[1, 3]] == 0).all()


@pytest.mark.parametrize(("logits", "neg_rows", "pos_rows", "message"), [
    (np.zeros((2, 3)), np.array([1, 2]), np.array([1, 5]),
     "logits has 3 columns, neg_rows has 2 entries"),
    (np.zeros((2, 3)), np.array([1, 2, 3, 4]), np.array([1, 5]),
     "logits has 3 columns, neg_rows has 4 entries"),
    (np.zeros((2, 3)), np.array([1, 2, 3]), np.array([1, 5, 6]),
     "logits has 2 rows, pos_rows has 3 entries"),
    (np.zeros(6), np.array([1, 2, 3]), np.array([1, 5]), r"logits must be 2-D, got shape \(6,\)"),
    (np.zeros((2, 3)), np.array([[1, 2, 3]]), np.array([1, 5]),
     r"neg_rows must be 1-D, got shape \(1, 3\)"),
])
def test_mask_hits_rejects_inconsistent_shapes_before_writing(
        logits: np.ndarray, neg_rows: np.ndarray, pos_rows: np.ndarray, message: str) -> None:
    logits = logits.astype(np.float32)
    with pytest.raises(ValueError, match=f"^mask_hits: {message}$"):
        kernels.mask_hits(logits, neg_rows, pos_rows)
    assert not np.isinf(logits).any()
