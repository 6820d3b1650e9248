"""The compiled kernels of ``models.kernels`` against plain Python/torch references."""

from __future__ import annotations

from typing import Any

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
                                     np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int8),
                                     np.zeros(2, np.int64), np.array([0, -1]),
                                     np.array([5, 6], np.int32), np.ones(2, np.float32),
                                     np.zeros(2, np.int8))


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


def test_bag_adagrad_matches_the_gathered_pairs_reference() -> None:
    """The pooled update equals what the two-tower step did before the kernel: the
    ``(event, slot)`` pairs with a positive weight, each with ``w·g + l2·row``, summed
    per row by the plain Adagrad reference."""
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(300, 8, generator=gen)
    accum = torch.rand(300, generator=gen)
    bags = torch.randint(0, 40, (50, 6), generator=gen)  # many repeats
    bag_w = torch.rand(50, 6, generator=gen) * (torch.rand(50, 6, generator=gen) > 0.4)
    grads = torch.randn(50, 8, generator=gen)
    l2 = torch.rand(50, generator=gen)
    b_idx, j_idx = (bag_w > 0).nonzero(as_tuple=True)
    rows = bags[b_idx, j_idx]
    g = grads[b_idx] * bag_w[b_idx, j_idx].unsqueeze(1) + l2[b_idx].unsqueeze(1) * weight[rows]
    w_ref, a_ref = weight.clone(), accum.clone()
    reference_adagrad(w_ref, a_ref, rows, g, 0.05, 0.9, 1e-8)
    kernels.bag_adagrad(weight.numpy(), accum.numpy(), bags.numpy(), bag_w.numpy(),
                        grads.numpy(), l2.numpy(), 0.05, 0.9, 1e-8)
    torch.testing.assert_close(accum, a_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight, w_ref, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(300, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(weight[untouched], w_ref[untouched])


def test_bag_adagrad_of_single_rows_is_rowwise_adagrad_with_l2() -> None:
    gen = torch.Generator().manual_seed(5)
    weight, accum = torch.randn(100, 8, generator=gen), torch.rand(100, generator=gen)
    rows = torch.randint(0, 30, (64,), generator=gen)
    grads = torch.randn(64, 8, generator=gen)
    w_ref, a_ref = weight.clone(), accum.clone()
    kernels.rowwise_adagrad(w_ref.numpy(), a_ref.numpy(), rows.numpy(),
                            (grads + 0.1 * w_ref[rows]).numpy(), 0.05, 1.0, 1e-8)
    kernels.bag_adagrad(weight.numpy(), accum.numpy(), rows.view(-1, 1).numpy(),
                        np.ones((64, 1), np.float32), grads.numpy(),
                        np.full(64, 0.1, np.float32), 0.05, 1.0, 1e-8)
    assert torch.equal(weight, w_ref) and torch.equal(accum, a_ref)


def test_pooled_rows_matches_index_select_plus_embedding_bag() -> None:
    gen = torch.Generator().manual_seed(6)
    table, pool = torch.randn(200, 8, generator=gen), torch.randn(50, 8, generator=gen)
    rows = torch.randint(0, 200, (40,), generator=gen)
    bags = torch.randint(0, 50, (40, 5), generator=gen)
    bag_w = torch.rand(40, 5, generator=gen) * (torch.rand(40, 5, generator=gen) > 0.3)
    expected = table.index_select(0, rows) + torch.nn.functional.embedding_bag(
        bags, pool, per_sample_weights=bag_w, mode="sum")
    got = kernels.pooled_rows(table.numpy(), rows.numpy(), pool.numpy(), bags.numpy(),
                              bag_w.numpy())
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-6, atol=1e-6)


def test_session_weights_match_the_torch_expressions() -> None:
    """What ``TwoTower._session_weights`` computed in torch before the kernel."""
    rng = np.random.default_rng(7)
    n, size = 300, 6
    rows = rng.integers(-1, 30, (n, size)).astype(np.int32)
    weights = rng.choice([0.5, 1.0, 3.0], (n, size)).astype(np.float32)
    ages = rng.integers(0, size, (n, size))
    exclude = rng.integers(-1, 30, n)
    scale = rng.random(n).astype(np.float32)
    hist = torch.from_numpy(rows.astype(np.int64))
    mask = (hist >= 0) & (hist != torch.from_numpy(exclude).unsqueeze(1))
    base = torch.from_numpy(weights) * mask
    omega = base * torch.from_numpy(0.8 ** ages.astype(np.float64)).float()
    omega = omega / omega.sum(1, keepdim=True).clamp(min=1e-12)
    omega = omega * torch.from_numpy(scale).unsqueeze(1)
    decay = (0.8 ** np.arange(size, dtype=np.float64)).astype(np.float32)
    got_hist, got_omega, got_base = kernels.session_weights(rows, weights, ages, exclude,
                                                            decay, scale)
    assert torch.equal(torch.from_numpy(got_hist), hist.clamp(min=0))
    assert torch.equal(torch.from_numpy(got_base), base)
    torch.testing.assert_close(torch.from_numpy(got_omega), omega, rtol=1e-6, atol=1e-7)


def test_ring_context_is_the_rings_with_their_ages() -> None:
    h = RecentHistory(size=5, capacity=50)
    h.resize(50)
    rng = np.random.default_rng(8)
    for _ in range(30):
        users = rng.integers(0, 50, 17)
        h.append(users, rng.integers(0, 99, 17), rng.random(17).astype(np.float32))
    users = rng.integers(0, 50, 40)
    rows, weights, ages = kernels.ring_context(h.buf, h.wbuf, h.count, users)
    count = h.count[users].reshape(-1, 1)
    assert np.array_equal(rows, h.buf[users]) and np.array_equal(weights, h.wbuf[users])
    assert np.array_equal(ages, (count - 1 - np.arange(5)) % 5)


def test_pooling_kernels_refuse_rows_outside_the_tables() -> None:
    one = np.ones((1, 1), np.float32)
    with pytest.raises(IndexError, match="out of range"):
        kernels.bag_adagrad(np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
                            np.array([[4]]), one, np.ones((1, 2), np.float32),
                            np.zeros(1, np.float32), 0.1, 1.0, 1e-8)
    with pytest.raises(IndexError, match="out of range"):
        kernels.pooled_rows(np.zeros((4, 2), np.float32), np.array([0]),
                            np.zeros((3, 2), np.float32), np.array([[3]]), one)
    with pytest.raises(IndexError, match="out of range"):
        kernels.pooled_rows(np.zeros((4, 2), np.float32), np.array([-1]),
                            np.zeros((3, 2), np.float32), np.array([[0]]), one)
    with pytest.raises(IndexError, match="out of range"):
        kernels.session_weights(np.array([[1, 2]], np.int32), np.ones((1, 2), np.float32),
                                np.array([[0, 2]]), np.array([-1]), np.ones(2, np.float32),
                                np.ones(1, np.float32))
    with pytest.raises(IndexError, match="out of range"):
        kernels.ring_context(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.float32),
                             np.zeros(2, np.int64), np.array([2]))


@pytest.mark.parametrize(("kernel", "args", "message"), [
    (kernels.bag_adagrad, (np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
                           np.zeros((3, 1), np.int64), np.ones((3, 1), np.float32),
                           np.ones((3, 3), np.float32), np.zeros(3, np.float32), 0.1, 1.0,
                           1e-8), "grads has 3 columns, weight has 2"),
    (kernels.bag_adagrad, (np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
                           np.zeros((3, 1), np.int64), np.ones((2, 1), np.float32),
                           np.ones((3, 2), np.float32), np.zeros(3, np.float32), 0.1, 1.0,
                           1e-8), "bag_w has 2 rows, bags has 3 rows"),
    (kernels.pooled_rows, (np.zeros((4, 2), np.float32), np.array([0, 1, 2]),
                           np.zeros((3, 3), np.float32), np.zeros((3, 1), np.int64),
                           np.ones((3, 1), np.float32)), "pool has 3 columns, table has 2"),
    (kernels.pooled_rows, (np.zeros((4, 2), np.float32), np.array([0, 1]),
                           np.zeros((3, 2), np.float32), np.zeros((3, 1), np.int64),
                           np.ones((3, 1), np.float32)), "bags has 3 rows, rows has 2 entries"),
    (kernels.session_weights, (np.zeros((2, 3), np.int32), np.ones((2, 3), np.float32),
                               np.zeros((2, 2), np.int64), np.full(2, -1),
                               np.ones(3, np.float32), np.ones(2, np.float32)),
     r"ages has shape \(2, 2\), rows has \(2, 3\)"),
    (kernels.session_weights, (np.zeros((2, 3), np.int32), np.ones((2, 3), np.float32),
                               np.zeros((2, 3), np.int64), np.full(2, -1),
                               np.ones(3, np.float32), np.ones(1, np.float32)),
     "scale has 1 entries, rows has 2 rows"),
])
def test_pooling_kernels_reject_inconsistent_shapes(kernel: Any, args: tuple[Any, ...],
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=f"^{kernel.__name__}: {message}$"):
        kernel(*args)
