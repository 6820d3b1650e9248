"""The hand-written gradients and the sampled-softmax pieces the defaults rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.errors import BadEvent
from datasets.synthetic import SyntheticConfig, SyntheticGenerator
from models.base import Recommender
from models.events import EventBatch
from models.factor import LOSSES, pair_loss_grads
from models.gmf import GMF
from models.sampler import NegativeSampler
from models.training import fit
from models.two_tower import TwoTower
from tests.test_models_contract import auc


@pytest.mark.parametrize("loss", LOSSES)
def test_pair_loss_grads_match_autograd(loss: str) -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    neg_raw = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    neg_raw[1, 3] = -math.inf  # a masked accidental hit
    neg = neg_raw.clone().requires_grad_(True)
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    value, g_pos, g_neg = pair_loss_grads(pos.detach(), neg.detach(), weights, loss)
    # autograd reference on the finite negatives only
    finite = torch.isfinite(neg_raw)
    if loss == "softmax":
        logits = torch.cat([pos.unsqueeze(1), neg], 1)
        ref = weights * (torch.logsumexp(logits, 1) - pos)
    elif loss == "bpr":
        diff = pos.unsqueeze(1) - torch.where(finite, neg, torch.zeros_like(neg))
        ref = weights * (torch.nn.functional.softplus(-diff) * finite).sum(1)
    else:
        sp = torch.nn.functional.softplus(torch.where(finite, neg, torch.zeros_like(neg)))
        ref = weights * (torch.nn.functional.softplus(-pos) + (sp * finite).sum(1))
    ref.sum().backward()
    assert value == pytest.approx(float(ref.detach().mean()), rel=1e-9)
    assert pos.grad is not None and neg.grad is not None
    torch.testing.assert_close(g_pos, pos.grad)
    torch.testing.assert_close(g_neg * finite, neg.grad * finite)
    assert abs(float(g_neg[1, 3])) < 1e-12  # the masked negative gets no gradient


def test_softmax_grads_sum_to_zero_per_event() -> None:
    pos, neg = torch.randn(4), torch.randn(4, 9)
    _, g_pos, g_neg = pair_loss_grads(pos, neg, torch.ones(4), "softmax")
    torch.testing.assert_close(g_pos + g_neg.sum(1), torch.zeros(4), atol=1e-6, rtol=0)
    assert (g_pos < 0).all() and (g_neg > 0).all()


def test_logq_correction_of_samplers() -> None:
    uniform = NegativeSampler("uniform")
    uniform.resize(1000)
    rows = uniform.sample(10)
    torch.testing.assert_close(uniform.logit_offset(rows, "softmax"),
                               torch.full((10,), math.log(1000 / 10)))
    assert (uniform.logit_offset(rows, "bpr") == 0).all()
    pop = NegativeSampler("popularity", alpha=1.0)
    pop.resize(3)
    pop.observe(np.array([0, 0, 0, 1]))  # counts + 1 -> weights 4, 2, 1
    rows = pop.sample(2)
    expected = -torch.log(2 * torch.tensor([4 / 7, 2 / 7, 1 / 7]))[rows]
    torch.testing.assert_close(pop.logit_offset(rows, "softmax"), expected.float())


def item_norm(model: Recommender) -> float:
    return float(np.linalg.norm(model.item_vectors()[1], axis=1).mean())


@pytest.mark.parametrize("cls", [GMF, TwoTower])
def test_single_event_stream_keeps_what_the_batches_learnt(cls: type[Recommender]) -> None:
    """Online micro-batches of one event (the stream) with the default 256 shared
    negatives: L2 on sampled negatives must scale with the batch size, otherwise every
    event shrinks 256 item rows and a trained model decays to noise."""
    gen = SyntheticGenerator(SyntheticConfig(n_users=200, n_items=120, n_clusters=6,
                                             taste=0.9, seed=3))
    events = EventBatch.from_interactions(gen.interactions(12_000))
    train, stream, held = (events.take(slice(0, 8_000)), events.take(slice(8_000, 8_300)),
                           events.take(slice(10_000, None)))
    model = cls(dim=16, seed=0)
    fit(model, train, epochs=3, batch_size=256)
    before = auc(model, held)
    norm_before = item_norm(model)
    for j in range(len(stream)):
        model.learn_many(stream.take(slice(j, j + 1)))
    assert before > 0.8
    assert auc(model, held) > before - 0.03
    # the item table is not shrunk toward zero by events it was only a negative of
    assert item_norm(model) > 0.8 * norm_before


def test_event_weights_are_looked_up_per_event() -> None:
    model = GMF(dim=4)
    batch = EventBatch(np.array(["u"] * 3), np.array(["i"] * 3),
                       np.array(["purchase", "view", "click"], dtype=object),
                       np.ones(3, np.float32), np.zeros(3, np.int64))
    assert model.event_weights_of(batch).tolist() == [4.0, 0.5, 1.0]
    with pytest.raises(BadEvent, match="'add_to_cart_x'"):  # a known name's prefix is no match
        model.event_weights_of(EventBatch.of(["u"], ["i"], event="add_to_cart_x"))


def test_two_tower_without_history_still_learns_and_serves() -> None:
    model = TwoTower(dim=8, history_size=0)
    assert np.isfinite(model.learn_many(EventBatch.of(["a", "b"], ["x", "y"])))
    assert model.recommend(["a"], 2)[0].tolist() == [["y", ""]]
