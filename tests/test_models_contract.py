"""One contract every recommender passes, on seeded synthetic data (cf. implicit/river)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import BadEvent, UnknownUser
from datasets.synthetic import SyntheticConfig, SyntheticGenerator
from models.base import Recommender
from models.cooc import Cooc
from models.events import EventBatch
from models.gmf import GMF
from models.hybrid import SessionCooc
from models.popularity import Popularity
from models.training import fit
from models.two_tower import SessionTwoTower, TwoTower

CONFIG = SyntheticConfig(n_users=200, n_items=120, n_clusters=6, taste=0.9, seed=3)


def make(kind: str) -> Recommender:
    if kind == "gmf":
        return GMF(dim=16, lr=0.1, l2=0.01, negatives=4, seed=0)
    if kind == "two_tower":
        return TwoTower(dim=16, lr=0.1, l2=0.01, negatives=4, n_buckets=64, seed=0)
    if kind == "session":
        return SessionTwoTower(dim=16, lr=0.1, l2=0.01, negatives=4, n_buckets=64, seed=0)
    if kind == "hybrid":
        return SessionCooc(dim=16, lr=0.1, l2=0.01, negatives=4, n_buckets=64, seed=0,
                           cooc_neighbours=16, cooc_window=5)
    if kind == "cooc":
        return Cooc(neighbours=16, window=5)
    return Popularity()


@pytest.fixture(scope="module")
def data() -> tuple[SyntheticGenerator, EventBatch, EventBatch]:
    gen = SyntheticGenerator(CONFIG)
    events = EventBatch.from_interactions(gen.interactions(12_000))
    return gen, events.take(slice(0, 10_000)), events.take(slice(10_000, None))


KINDS = ["gmf", "two_tower", "session", "hybrid", "cooc"]


@pytest.fixture(scope="module", params=KINDS)
def trained(request: pytest.FixtureRequest, data: tuple) -> Recommender:
    gen, train, _ = data
    model = make(request.param)
    for item in gen.items().values():
        model.upsert_item(item.item_id, item.attributes)
    fit(model, train, epochs=3, batch_size=128)
    return model


def auc(model: Recommender, held_out: EventBatch, seed: int = 0) -> float:
    """P(score of a held-out positive > score of a random item) for known users."""
    known = np.array([model.knows_user(u) for u in held_out.users.tolist()])
    users = held_out.users[known]
    rng = np.random.default_rng(seed)
    negatives = np.array(model.item_ids.ids)[rng.integers(0, len(model.item_ids), len(users))]
    pos = model.score(users.tolist(), held_out.items[known].tolist())
    neg = model.score(users.tolist(), negatives.tolist())
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def test_learning_separates_positives_from_negatives(trained: Recommender, data: tuple) -> None:
    assert auc(trained, data[2]) > 0.8


def test_untrained_model_is_near_chance(data: tuple) -> None:
    gen, train, held = data
    model = make("gmf")
    model.observe(train)  # registers ids, no learning
    assert 0.35 < auc(model, held) < 0.65


@pytest.mark.parametrize("kind", [*KINDS, "popularity"])
def test_learn_many_grows_for_unseen_ids_and_returns_loss(kind: str) -> None:
    model = make(kind)
    loss = model.learn_many(EventBatch.of(["a", "b"], ["x", "y"]))
    assert np.isfinite(loss)
    assert len(model.user_ids) == 2 and len(model.item_ids) == 2
    model.learn_many(EventBatch.of(["c"], ["z"], event="purchase"))
    assert len(model.user_ids) == 3 and len(model.item_ids) == 3
    assert model.events_seen == 3
    assert model.recent_history("a") == ["x"]


@pytest.mark.parametrize("kind", [*KINDS, "popularity"])
def test_unknown_event_type_is_a_bad_event(kind: str) -> None:
    with pytest.raises(BadEvent, match="unknown event type 'like'"):
        make(kind).learn_many(EventBatch.of(["a"], ["x"], event="like"))


def test_retrieval_vectors_rank_exactly_like_scores(trained: Recommender) -> None:
    """Dense query · item vectors, plus the sparse part where a model has one."""
    users = trained.user_ids.ids[:20]
    ids, items = trained.item_vectors()
    queries = trained.user_vectors(users)
    assert queries.dtype == np.float32 and items.dtype == np.float32
    assert queries.shape == (20, trained.vector_dim)
    assert items.shape == (len(ids), trained.vector_dim)
    sparse = trained.user_sparse_vectors(users)
    column = {item: j for j, item in enumerate(ids)}
    for u, q, (sp_ids, sp_values) in zip(users, queries, sparse, strict=True):
        inner = items.astype(np.float64) @ q.astype(np.float64)
        assert sp_values.dtype == np.float32
        inner[[column[i] for i in sp_ids]] += sp_values.astype(np.float64)
        scores = trained.score([u] * len(ids), ids)
        assert np.array_equal(np.argsort(-inner, kind="stable"),
                              np.argsort(-scores, kind="stable"))


def test_recommend_matches_scores_and_excludes_seen(trained: Recommender) -> None:
    users = trained.user_ids.ids[:5]
    ids, scores = trained.recommend(users, 10)
    assert ids.shape == (5, 10) and scores.shape == (5, 10)
    for u, row_ids, row_scores in zip(users, ids, scores, strict=True):
        assert np.all(np.diff(row_scores) <= 1e-12)
        seen = set(trained.item_ids.ids_of(trained.seen.of(trained.user_ids.lookup([u])[0])))
        assert not seen & set(row_ids.tolist())
        np.testing.assert_allclose(trained.score([u] * 10, row_ids.tolist()), row_scores,
                                   rtol=1e-6)
    ids_all, _ = trained.recommend(users[:1], 10, exclude_seen=False)
    all_scores = trained.score([users[0]] * len(trained.item_ids), trained.item_ids.ids)
    assert trained.score([users[0]], [ids_all[0, 0]])[0] == pytest.approx(all_scores.max())


def test_recommend_pads_when_fewer_candidates_than_k() -> None:
    model = make("gmf")
    model.learn_many(EventBatch.of(["a", "a"], ["x", "y"]))
    model.learn_many(EventBatch.of(["b"], ["z"]))
    ids, scores = model.recommend(["a"], 3)
    assert ids[0].tolist() == ["z", "", ""]
    assert np.isneginf(scores[0, 1:]).all()


def test_unknown_users_and_items(trained: Recommender) -> None:
    assert np.isnan(trained.score(["nobody"], [trained.item_ids.ids[0]])[0])
    assert np.isnan(trained.score([trained.user_ids.ids[0]], ["no-item"])[0])
    with pytest.raises(UnknownUser):
        trained.recommend(["nobody"], 5)
    assert trained.recent_history("nobody") == []


def test_upsert_item_returns_its_retrieval_vector(trained: Recommender) -> None:
    model = trained.clone()
    model.learn_many(EventBatch.of(["u1"], ["i1"]))
    vec = model.upsert_item("brand-new", {"title": "New", "genres": ["c1"], "year": 2001})
    _, expected = model.item_vectors(["brand-new"])
    assert vec.shape == (model.vector_dim,)
    np.testing.assert_array_equal(vec, expected[0])


def test_recent_history_is_bounded_and_ordered() -> None:
    model = GMF(dim=4, history_size=3)
    model.learn_many(EventBatch.of(["u"] * 5, ["a", "b", "c", "d", "e"]))
    assert model.recent_history("u") == ["c", "d", "e"]
    model.learn_many(EventBatch.of(["u"], ["f"]))
    assert model.recent_history("u") == ["d", "e", "f"]


def test_clone_has_same_params_and_no_state(trained: Recommender) -> None:
    fresh = trained.clone()
    assert fresh.get_params() == trained.get_params()
    assert len(fresh.user_ids) == 0


def test_popularity_ranks_by_count_for_anyone() -> None:
    model = Popularity()
    model.learn_many(EventBatch.of(["a", "b", "c", "a"], ["x", "x", "y", "z"]))
    ids, scores = model.recommend(["stranger"], 2)
    assert ids[0, 0] == "x" and scores[0, 0] == 2.0
    ids, _ = model.recommend(["a"], 1)
    assert ids[0, 0] == "y"


def test_event_weights_order_view_click_cart_purchase() -> None:
    w = GMF().event_weights
    assert w["view"] < w["click"] < w["add_to_cart"] < w["purchase"]


def test_two_tower_cold_item_gets_a_useful_vector(data: tuple) -> None:
    gen, train, _ = data
    model = make("two_tower")
    for item in gen.items().values():
        model.upsert_item(item.item_id, item.attributes)
    torch.manual_seed(0)
    fit(model, train, epochs=3, batch_size=128)
    cluster = 2
    model.upsert_item("cold", {"title": "Cold", "genres": [f"c{cluster}"]})
    users = [u for u in model.user_ids.ids]
    clusters = gen.user_cluster0[[int(u[1:]) for u in users]]
    scores = model.score(users, ["cold"] * len(users))
    assert scores[clusters == cluster].mean() > scores[clusters != cluster].mean() + 0.05


@pytest.mark.parametrize("kind", ["session", "hybrid", "cooc"])
def test_a_click_moves_the_query_before_any_gradient_step(kind: str, data: tuple) -> None:
    """Session-aware models: the query follows the recent history, so recording a
    click (``observe``: no gradient step at all) already changes ``user_vectors`` or its
    sparse part, and the scores; GMF's query does not move without a step."""
    gen, train, _ = data
    model = make(kind)
    fit(model, train.take(slice(0, 3000)), epochs=1, batch_size=128)
    user, item = str(train.users[0]), str(train.items[5])
    before = model.score([user] * len(model.item_ids), model.item_ids.ids)
    q_before = model.user_vectors([user])
    sparse_before = model.user_sparse_vectors([user])[0]
    model.observe(EventBatch.of([user], [item]))
    after = model.score([user] * len(model.item_ids), model.item_ids.ids)
    moved = (not np.array_equal(q_before, model.user_vectors([user]))
             or model.user_sparse_vectors([user])[0][0] != sparse_before[0])
    assert moved and not np.array_equal(before, after)
    gmf = make("gmf")
    fit(gmf, train.take(slice(0, 3000)), epochs=1, batch_size=128)
    q = gmf.user_vectors([user])
    gmf.observe(EventBatch.of([user], [item]))
    assert np.array_equal(q, gmf.user_vectors([user]))


def test_offline_epochs_train_each_event_on_the_history_before_it() -> None:
    """``fit`` gives a session model each event's preceding history in the log, not the
    live ring (which in shuffled epochs holds later events)."""
    seen: list[tuple[str, list[str]]] = []

    class Spy(SessionTwoTower):
        def _learn_in_context(self, users, items, weights, context):  # type: ignore[no-untyped-def]
            for i, rows in zip(items.tolist(), context.rows, strict=True):
                hist = [self.item_ids.ids[r] for r in rows.tolist() if r >= 0]
                seen.append((self.item_ids.ids[i], sorted(hist)))
            return super()._learn_in_context(users, items, weights, context)

    model = Spy(dim=4, negatives=2, n_buckets=8, history_size=3)
    fit(model, EventBatch.of(["u"] * 5, ["a", "b", "c", "d", "e"]), epochs=2, batch_size=2)
    expected = {"a": [], "b": ["a"], "c": ["a", "b"], "d": ["a", "b", "c"],
                "e": ["b", "c", "d"]}
    assert len(seen) == 10 and all(expected[i] == h for i, h in seen)
    assert model.recent_history("u") == ["c", "d", "e"]
