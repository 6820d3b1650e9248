"""The session-aware query (issue 11): the session gate, the content part, the dropout
that teaches the long-term row to stand alone, and event times in the histories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.events import EventBatch
from models.history import NO_TS, RecentHistory
from models.hybrid import SessionCooc
from models.two_tower import SessionTwoTower

MINUTE_MS = 60_000


def catalogue_model(**params: object) -> SessionTwoTower:
    """A small session model over 20 items, 10 of genre A (``a0..a9``), 10 of B."""
    model = SessionTwoTower(dim=8, negatives=4, n_buckets=64, history_size=10,
                            session_half_life_s=60.0, **params)  # type: ignore[arg-type]
    for g in "ab":
        for j in range(10):
            model.upsert_item(f"{g}{j}", {"genres": [g.upper()]})
    return model


def test_contexts_carry_the_gap_since_the_users_previous_event() -> None:
    h = RecentHistory(size=3)
    ctx = h.contexts(np.array([0, 1, 0, 0]), np.array([5, 6, 7, 8]), np.ones(4, np.float32),
                     np.array([1_000, 2_000, 4_000, 4_500]))
    assert ctx.gaps_ms is not None
    assert ctx.gaps_ms.tolist() == [np.inf, np.inf, 3_000.0, 500.0]
    assert ctx.take(slice(2, 4)).gaps_ms.tolist() == [3_000.0, 500.0]  # type: ignore[union-attr]


def test_last_event_time_only_moves_forward() -> None:
    h = RecentHistory(size=2)
    h.resize(2)
    h.append(np.array([0, 0]), np.array([1, 2]), ts_ms=np.array([5_000, 3_000]))
    assert h.last_ts[:2].tolist() == [5_000, NO_TS]
    assert h.context(np.array([0, 1]), 6_000).gaps_ms.tolist() == [1_000.0, np.inf]  # type: ignore[union-attr]


def test_the_session_part_fades_with_the_time_since_the_users_last_event() -> None:
    """Right after a click the history part is at full weight; one half-life later
    (event time: another user's event moves the clock) it is halved, and with no
    event at all the query is the long-term row alone."""
    model = catalogue_model(content_dims=0, content_weight=0.0)
    model.observe(EventBatch.of(["u", "u"], ["a0", "a1"], ts_ms=10 * MINUTE_MS))
    model.register(users=["new"])
    row = model.user_ids.lookup(["u"])
    long_term = model.users_t.weight[torch.from_numpy(row)].numpy()
    fresh = model.user_vectors(["u"]) - long_term
    model.observe(EventBatch.of(["v"], ["b0"], ts_ms=11 * MINUTE_MS))  # clock + 60 s
    later = model.user_vectors(["u"]) - long_term
    np.testing.assert_allclose(later, 0.5 * fresh, rtol=1e-5, atol=1e-7)
    assert np.abs(fresh).sum() > 0
    new = model.user_ids.lookup(["new"])
    np.testing.assert_array_equal(model.user_vectors(["new"]),
                                  model.users_t.weight[torch.from_numpy(new)].numpy())


def test_clicks_in_a_new_genre_lift_that_genre_at_once() -> None:
    """A user with a long B history clicks three A items: every other A item gains
    score over every B item, before any gradient step (the content part), and the
    exported vectors carry it (``vector_dim`` = ``dim`` + ``content_dims``)."""
    model = catalogue_model()
    old = [f"b{j % 10}" for j in range(10)]
    model.observe(EventBatch.of(["u"] * 10, old, ts_ms=0))
    a_items, b_items = [f"a{j}" for j in range(3, 10)], [f"b{j}" for j in range(10)]
    before_a = model.score(["u"] * 7, a_items)
    before_b = model.score(["u"] * 10, b_items)
    model.observe(EventBatch.of(["u"] * 3, ["a0", "a1", "a2"], ts_ms=60 * MINUTE_MS))
    gain_a = model.score(["u"] * 7, a_items) - before_a
    gain_b = model.score(["u"] * 10, b_items) - before_b
    assert gain_a.min() > gain_b.max()
    ids, vectors = model.item_vectors()
    assert vectors.shape == (20, model.vector_dim) and model.vector_dim == 8 + 32
    inner = model.user_vectors(["u"])[0] @ vectors.T
    order = np.argsort(-inner, kind="stable")
    scores = model.score(["u"] * 20, ids)
    assert np.all(np.diff(scores[order]) <= 1e-6)  # inner product ranks like score


def test_a_session_in_the_users_usual_genre_adds_no_content_part() -> None:
    """The content part is the *lift* of the session over the recent history's plain
    mean: more of what the user always does moves nothing."""
    model = catalogue_model()
    model.observe(EventBatch.of(["u"] * 10, [f"b{j}" for j in range(10)], ts_ms=0))
    content = model.user_vectors(["u"])[0, model.dim:]
    assert np.abs(content).max() < 1e-6


def test_session_dropout_leaves_the_history_out_of_that_share_of_events() -> None:
    model = catalogue_model(session_dropout=0.5)
    users = [f"u{j}" for j in range(400)]
    model.observe(EventBatch.of(users, ["a0"] * 400, ts_ms=0))
    rows = model.user_ids.lookup(users)
    _, _, omega = model._user_tower(rows, dropout=0.5)
    dropped = float((omega.sum(1) == 0).float().mean())
    assert 0.4 < dropped < 0.6
    _, _, omega = model._user_tower(rows)  # serving: never dropped
    assert bool((omega.sum(1) > 0).all())


def test_the_hybrid_sparse_part_fades_with_the_session_too() -> None:
    model = SessionCooc(dim=8, negatives=4, n_buckets=64, history_size=10,
                        cooc_neighbours=8, cooc_window=5, session_half_life_s=60.0)
    log = EventBatch.of(["x", "x", "y", "y", "u"], ["i1", "i2", "i1", "i2", "i1"],
                        ts_ms=0)
    model.observe(log)
    ids0, values0 = model.user_sparse_vectors(["u"])[0]
    model.observe(EventBatch.of(["v"], ["i3"], ts_ms=MINUTE_MS))
    ids1, values1 = model.user_sparse_vectors(["u"])[0]
    assert ids0 == ids1 and "i2" in ids0
    np.testing.assert_allclose(values1, 0.5 * values0, rtol=1e-5)


def test_the_servers_sparse_part_gives_the_models_own(tmp_path: Path) -> None:
    """No training/serving skew for the hybrid's co-occurrence part either: what the API
    computes per request (``common.session_query.sparse_query`` over the user's recent
    events, the lists the worker stores per item and the published ``SparseQuery``) is
    the model's ``user_sparse_vectors``, at the last event and later (the gate)."""
    from common.session_query import SparseQuery, session_gate, sparse_query, sparse_sources

    rng = np.random.default_rng(0)
    model = SessionCooc(dim=8, negatives=4, n_buckets=64, history_size=12,
                        cooc_neighbours=30, cooc_window=6, session_half_life_s=60.0)
    items = [f"i{j}" for j in range(25)]
    for t in range(40):  # mixed event types: their weights enter the score
        users = [f"u{j}" for j in rng.integers(0, 8, 6)]
        model.learn_many(EventBatch.of(users, [items[j] for j in rng.integers(0, 25, 6)],
                                       event=str(rng.choice(["click", "view", "purchase"])),
                                       ts_ms=t * 1000))
    sparse = SparseQuery(**model.sparse_query_params())  # type: ignore[arg-type]
    assert sparse.weight == model.cooc_weight and sparse.window == 6
    for user in ("u0", "u3", "u5"):
        recent = model.recent_events(user)
        # the worker stores every partner it keeps (RECSYS_WORKER_COOC_SERVED >= neighbours)
        lists = {}
        for h in sparse_sources(recent, sparse):
            ids, sims = model.similar_items(h, model.cooc_neighbours)
            lists[h] = list(zip(ids, sims.tolist(), strict=True))
        last = int(model.history.last_ts[model.user_ids.lookup([user])[0]])
        for later_ms in (0, 45_000):
            with model.asked_at({user: last + later_ms}):
                ids, values = model.user_sparse_vectors([user])[0]
            gate = session_gate(later_ms, model.session_half_life_s)
            got = sparse_query(recent, lists, sparse, gate)
            assert set(got) == set(ids) and ids
            np.testing.assert_allclose([got[i] for i in ids], values, rtol=1e-5)


def test_event_times_survive_a_checkpoint(tmp_path: Path) -> None:
    model = catalogue_model()
    model.observe(EventBatch.of(["u", "w"], ["a0", "b1"], ts_ms=7 * MINUTE_MS))
    version = save_checkpoint(model, tmp_path)
    restored = load_checkpoint(tmp_path, version)
    assert isinstance(restored, SessionTwoTower)
    rows = restored.user_ids.lookup(["u", "w"])
    assert restored.history.last_ts[rows].tolist() == [7 * MINUTE_MS] * 2
    np.testing.assert_array_equal(restored.user_vectors(["u", "w"]),
                                  model.user_vectors(["u", "w"]))


def test_a_ring_keeps_event_types_and_the_stored_version_it_reflects(tmp_path: Path) -> None:
    """The ring gives back (item, type) as a document stores them; a row tied to a stored
    history counts appended events; both survive a checkpoint."""
    model = catalogue_model()
    model.observe(EventBatch.of(["u"], ["a0"], event="view", ts_ms=MINUTE_MS))
    model.observe(EventBatch.of(["u"], ["b1"], event="purchase", ts_ms=2 * MINUTE_MS))
    assert model.recent_events("u") == [("a0", "view"), ("b1", "purchase")]
    row = int(model.user_ids.lookup(["u"])[0])
    assert model.history.version[row] == -1  # tied to no document yet
    # a stored history of 4 events with one the model never saw: reloaded, then counted
    assert model.sync_histories(["u"], [4], [[("a1", "click"), ("zz", "view"),
                                              ("a2", "click"), ("b3", "rating")]],
                                [5 * MINUTE_MS]) == 1
    assert model.recent_events("u") == [("a1", "click"), ("zz", "view"), ("a2", "click"),
                                        ("b3", "rating")]
    assert model.history.last_ts[row] == 5 * MINUTE_MS
    assert model.sync_histories(["u"], [4], [[]], [0]) == 0  # in step: left alone
    model.observe(EventBatch.of(["u"], ["a3"], ts_ms=6 * MINUTE_MS))
    assert model.history.version[row] == 5
    restored = load_checkpoint(tmp_path, save_checkpoint(model, tmp_path))
    assert restored.recent_events("u") == model.recent_events("u")
    assert restored.history.version[row] == 5


def test_the_session_model_counts_co_occurrence_for_similar_items(tmp_path: Path) -> None:
    """Every session model keeps the stream's co-occurrence (not in its score): items
    clicked one after the other become each other's similar items; the lists to
    re-serve are those whose partners changed; the counts survive a checkpoint, and a
    checkpoint written before they were kept still loads (with none)."""
    model = catalogue_model()
    plain = catalogue_model(cooc_neighbours=4)
    for m in (model, plain):
        m.learn_many(EventBatch.of(["u", "u", "w", "w"], ["a0", "a1", "a0", "a1"]))
    assert model.similar_items("a0", 5)[0] == ["a1"]
    # not part of the score: a model counting 4 partners per item scores the same
    np.testing.assert_array_equal(model.score(["u", "u"], ["a0", "b2"]),
                                  plain.score(["u", "u"], ["a0", "b2"]))
    changed = model.changed_similar(5)
    assert set(changed) == {"a0", "a1"} and changed["a0"][0][0] == "a1"
    assert model.changed_similar(5) == {}  # nothing changed since
    model.learn_many(EventBatch.of(["w"], ["b2"]))  # marks b2, a1 and a0 again
    first = model.changed_similar(5, limit=2)
    assert len(first) == 2 and len(model.changed_similar(5, limit=2)) == 1
    model.learn_many(EventBatch.of(["u"], ["b2"]))
    assert set(model.changed_similar(5)) == {"a0", "a1", "b2"}
    restored = load_checkpoint(tmp_path, save_checkpoint(model, tmp_path))
    ids, sims = model.similar_items("b2", 5)
    assert ids == ["a1", "a0"]  # u clicked a1 just before b2 (window order), then a0
    assert restored.similar_items("b2", 5)[0] == ids
    np.testing.assert_array_equal(restored.similar_items("b2", 5)[1], sims)
    assert set(restored.changed_similar(5)) == {"a0", "a1", "b2"}  # re-served after a start
    arrays = {k: v for k, v in model.state_arrays().items() if not k.startswith("cooc.")}
    old = model.clone()
    old.register(users=list(model.user_ids.ids), items=list(model.item_ids.ids))
    old.load_state_arrays(arrays)
    assert old.similar_items("a0", 5)[0] == []


@pytest.mark.parametrize("bad", [{"session_dropout": 1.0}, {"session_half_life_s": -1.0},
                                 {"content_dims": 0, "content_weight": 1.0}])
def test_bad_session_hyperparameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SessionTwoTower(**bad)  # type: ignore[arg-type]


def test_a_query_asked_when_the_user_acts_has_the_session_at_full_weight() -> None:
    model = catalogue_model(content_dims=0, content_weight=0.0)
    model.observe(EventBatch.of(["u"], ["a0"], ts_ms=0))
    fresh = model.user_vectors(["u"])
    model.observe(EventBatch.of(["v"], ["b0"], ts_ms=10 * MINUTE_MS))  # the clock moves on
    assert not np.allclose(model.user_vectors(["u"]), fresh)
    with model.asked_at({"u": 0, "nobody": 5}):
        np.testing.assert_array_equal(model.user_vectors(["u"]), fresh)


def test_the_query_at_any_time_is_a_blend_of_its_two_parts() -> None:
    """``user_vector_parts`` lets a server compute the query at request time: the query
    asked ``t`` after the last event is ``long + g(t) · (fresh − long)``."""
    model = catalogue_model()
    model.observe(EventBatch.of(["u"] * 10, [f"b{j}" for j in range(10)], ts_ms=0))
    model.observe(EventBatch.of(["u"] * 3, ["a0", "a1", "a2"], ts_ms=MINUTE_MS))
    long_term, fresh, last = model.user_vector_parts(["u"])
    assert last.tolist() == [MINUTE_MS] and not np.allclose(long_term, fresh)
    for minutes in (0.5, 1.0, 3.0):
        asked = MINUTE_MS + int(minutes * MINUTE_MS)
        gate = model.session_gate(np.array([asked - MINUTE_MS]))[0]
        with model.asked_at({"u": asked}):
            np.testing.assert_allclose(model.user_vectors(["u"]),
                                       long_term + gate * (fresh - long_term), atol=1e-5)


def test_the_servers_formula_gives_the_models_own_query() -> None:
    """No training/serving skew: ``common.session_query.query_at`` over the exported
    parts equals the model's query asked at the same time (what the API computes per
    request, without the model)."""
    from common.session_query import query_at

    model = catalogue_model()
    model.observe(EventBatch.of(["u"] * 10, [f"b{j}" for j in range(10)], ts_ms=0))
    model.observe(EventBatch.of(["u"] * 2, ["a0", "a1"], ts_ms=MINUTE_MS))
    long_term, fresh, last = model.user_vector_parts(["u"])
    for asked in (MINUTE_MS, 2 * MINUTE_MS, 90 * MINUTE_MS):
        with model.asked_at({"u": asked}):
            expected = model.user_vectors(["u"])[0]
        got = query_at(long_term[0].tolist(), fresh[0].tolist(), int(last[0]), asked,
                       model.session_half_life_s)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_bootstrap_gives_a_session_model_the_catalogues_attributes(tmp_path: Path) -> None:
    """``scripts.bootstrap`` (the product default model) registers every MovieLens item's
    attributes before learning: without them the content part is empty and five clicks
    in a new genre move nothing (the demo's step 4 showed it)."""
    from scripts import bootstrap

    bootstrap.main(["--until-fraction", "0.02", "--epochs", "1", "--out", str(tmp_path)])
    model = load_checkpoint(tmp_path / "checkpoints")
    assert isinstance(model, SessionTwoTower)
    assert len(model.item_ids) == 1682  # the whole catalogue, clicked or not
    ids, vectors = model.item_vectors()
    content = vectors[:, model.dim:]
    assert (np.abs(content).sum(1) > 0).mean() > 0.99  # every item with genres has one
