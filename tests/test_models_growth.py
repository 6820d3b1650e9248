"""Growable tables keep trained rows and optimiser state; ids map stably."""

from __future__ import annotations

import numpy as np
import torch

from models.events import EventBatch
from models.gmf import GMF
from models.growable import GrowableTable
from models.history import RecentHistory
from models.ids import IdMap


def test_growth_keeps_rows_and_optimizer_state() -> None:
    t = GrowableTable(dim=8, init_std=0.1, capacity=4, growth=1.5, seed=0)
    t.resize(4)
    t.step(torch.tensor([0, 2, 2]), torch.ones(3, 8), lr=0.1)
    before_w, before_acc = t.rows().clone(), t.accum[:4].clone()
    assert before_acc[2] > before_acc[0] > 0 and before_acc[1] == 0
    t.resize(5)  # exceeds capacity 4
    assert t.capacity >= 6 and t.grow_count == 1
    assert torch.equal(t.rows()[:4], before_w)
    assert torch.equal(t.accum[:4], before_acc)
    assert t.accum[4] == 0 and t.rows()[4].abs().sum() > 0


def test_growth_is_amortised() -> None:
    t = GrowableTable(dim=2, init_std=0.1, capacity=1, growth=1.5)
    for n in range(1, 2001):
        t.resize(n)
    assert t.n_rows == 2000 and t.grow_count < 25


def test_sparse_step_touches_only_batch_rows() -> None:
    t = GrowableTable(dim=4, init_std=0.1, capacity=10, seed=1)
    t.resize(10)
    before = t.rows().clone()
    t.step(torch.tensor([3, 7, 3]), torch.randn(3, 4), lr=0.5)
    changed = (t.rows() != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 7]


def test_repeated_rows_sum_their_gradients() -> None:
    a = GrowableTable(dim=2, init_std=0.0, capacity=2, init_value=0.0)
    b = GrowableTable(dim=2, init_std=0.0, capacity=2, init_value=0.0)
    a.resize(2)
    b.resize(2)
    a.step(torch.tensor([1, 1]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), lr=0.1)
    b.step(torch.tensor([1]), torch.tensor([[4.0, 6.0]]), lr=0.1)
    assert torch.allclose(a.rows(), b.rows())


def test_model_growth_keeps_trained_rows_and_state() -> None:
    model = GMF(dim=8, growth=1.25)
    model.learn_many(EventBatch.of([f"u{j}" for j in range(50)], [f"i{j % 7}" for j in range(50)]))
    users_w = model.users_t.rows().clone()
    users_acc = model.users_t.accum[:50].clone()
    items_w = model.items_t.rows().clone()
    cap = model.users_t.capacity
    new_users = [f"n{j}" for j in range(cap * 2)]
    model.observe(EventBatch.of(new_users, ["fresh"] * len(new_users)))
    assert model.users_t.capacity >= len(model.user_ids) > cap
    assert torch.equal(model.users_t.rows()[:50], users_w)
    assert torch.equal(model.users_t.accum[:50], users_acc)
    assert torch.equal(model.items_t.rows()[: len(items_w)], items_w)
    assert model.user_ids.lookup(["u3"])[0] == 3


def test_id_map_is_stable_and_round_trips() -> None:
    m = IdMap()
    rows = m.add(np.array(["b", "a", "b", "c"]))
    assert rows.tolist() == [0, 1, 0, 2]
    again = IdMap.from_json(m.to_json())
    assert again.lookup(["c", "a", "zz"]).tolist() == [2, 1, -1]


def test_history_keeps_last_events_in_order_with_repeats_in_batch() -> None:
    h = RecentHistory(size=3, capacity=1)
    h.resize(2)
    h.append(np.array([0, 1, 0, 0, 0]), np.array([10, 20, 11, 12, 13]))
    assert h.of(0).tolist() == [11, 12, 13]
    assert h.of(1).tolist() == [20]
    h.append(np.array([0]), np.array([14]))
    assert h.of(0).tolist() == [12, 13, 14]
