"""The ranking stage (issue 12): candidates merged from several sources, one feature
definition for the worker and the API, the LightGBM ranker and its text form, and a
ranker that must beat retrieval alone on a held-out slice of the stream."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from common.session_query import SparseQuery, query_at, session_gate, sparse_query, sparse_sources
from common.settings import Settings
from common.stores import RecentEvent
from faiss_server.config import IndexSpec
from faiss_server.index import VectorIndex
from models.events import EventBatch
from models.hybrid import SessionCooc
from ranking.features import (
    ABSENT_RANK,
    FEATURES,
    SOURCES,
    UserContext,
    features,
    merge,
    proposals,
    retrieval_scores,
)
from ranking.offline import RankedModel, SourceSizes, model_inputs, replay_examples
from ranking.ranker import Examples, Ranker, RankerError, RankerParams, train_ranker
from recommender_server.ranking import rank
from streams.ranker_training import load_latest_ranker, save_ranker


def test_merge_keeps_each_sources_score_and_rank_once_per_item() -> None:
    c = merge({"ann": [("a", 3.0), ("s", 2.5), ("b", 2.0)], "cooc": [("b", 0.7), ("c", 0.1)],
               "popular": [("c", 50.0), ("a", 40.0)]}, skip={"s"})
    assert c.ids == ["a", "b", "c"]
    col = {s: j for j, s in enumerate(SOURCES)}
    assert c.scores[0, col["ann"]] == 3.0 and c.ranks[1, col["ann"]] == 1  # "s" skipped
    assert c.ranks[1, col["cooc"]] == 0 and c.ranks[2, col["popular"]] == 0
    assert math.isnan(c.scores[2, col["ann"]]) and c.ranks[2, col["ann"]] == ABSENT_RANK
    assert c.sources_of(0) == ["ann", "popular"] and c.sources_of(2) == ["cooc", "popular"]
    with pytest.raises(ValueError, match="unknown candidate sources"):
        merge({"nope": [("a", 1.0)]})


def test_retrieval_order_is_the_ann_score_then_the_other_sources_in_merge_order() -> None:
    c = merge({"ann": [("a", 0.1), ("b", 0.5)], "popular": [("p", 9.0), ("q", 8.0)]})
    order = np.argsort(-retrieval_scores(c), kind="stable")
    assert [c.ids[j] for j in order] == ["b", "a", "p", "q"]


def test_features_read_the_users_taste_and_the_items_co_occurrence() -> None:
    meta = {"h1": {"genres": ["A"], "year": 1990}, "h2": {"genres": ["A", "B"], "year": 1994},
            "x": {"genres": ["A"], "year": 2000}, "y": {"genres": ["C"]}}
    c = merge({"ann": [("x", 1.0), ("y", 0.5)], "popular": [("y", 10.0)]})
    f = features(UserContext(["h1", "h2"], 7), c, {"h2": [("x", 0.5)], "h1": [("x", 0.2)]},
                 meta, [("y", 10.0), ("x", 5.0)])
    col = {n: j for j, n in enumerate(FEATURES)}
    x, y = f[0], f[1]
    assert x[col["knn_last"]] == pytest.approx(0.5) and x[col["knn_max"]] == pytest.approx(0.5)
    assert x[col["knn_recent"]] == pytest.approx(0.5 + 0.9 * 0.2) and y[col["knn_hits"]] == 0
    assert x[col["genre_affinity"]] == pytest.approx(2 / 3) and y[col["genre_affinity"]] == 0
    assert x[col["since_similar"]] == 0 and y[col["since_similar"]] == 2  # never: len
    assert x[col["pop_rel"]] == pytest.approx(0.5) and y[col["pop_rank"]] == 0
    assert x[col["year_gap"]] == pytest.approx(8.0) and math.isnan(y[col["item_year"]])
    assert x[col["user_events"]] == pytest.approx(math.log1p(7))
    assert x[col["n_sources"]] == 1 and y[col["n_sources"]] == 2


def small_hybrid(seed: int = 0) -> tuple[SessionCooc, dict[str, dict[str, object]]]:
    rng = np.random.default_rng(seed)
    model = SessionCooc(dim=8, negatives=4, n_buckets=64, history_size=12,
                        cooc_neighbours=30, cooc_window=6, session_half_life_s=600.0)
    meta: dict[str, dict[str, object]] = {}
    for j in range(60):
        meta[f"i{j}"] = {"genres": [["A", "B", "C"][j % 3]], "year": 1980 + j % 20}
        model.upsert_item(f"i{j}", meta[f"i{j}"])
    for t in range(80):
        users = [f"u{j}" for j in rng.integers(0, 10, 8)]
        model.learn_many(EventBatch.of(users, [f"i{j}" for j in rng.integers(0, 60, 8)],
                                       ts_ms=t * 1000))
    return model, meta


def test_the_api_and_the_worker_compute_the_same_features() -> None:
    """No training/serving skew: the worker's candidates and features (from the model,
    :func:`ranking.offline.model_inputs`) equal the API's, gathered as it serves them:
    the session query from the user's two exported vectors, a FAISS search with the
    sparse part as boosts and the history excluded, the co-occurrence lists as the worker
    stores them, then :func:`recommender_server.ranking.rank`."""
    model, meta = small_hybrid()
    ids, vectors = model.item_vectors()
    index = VectorIndex.build(IndexSpec(kind="flat", dim=model.vector_dim), "v1", ids, vectors)
    popular = [(f"i{j}", 100.0 - j) for j in range(0, 60, 2)]
    sparse = SparseQuery(**model.sparse_query_params())  # type: ignore[arg-type]
    for user in ("u0", "u3", "u7"):
        recent: list[RecentEvent] = model.recent_events(user)
        items = [i for i, _ in recent]
        seen = set(items)
        last = int(model.history.last_ts[model.user_ids.lookup([user])[0]])
        asked = last + 30_000
        with model.asked_at({user: asked}):
            (offline,) = model_inputs(model, [user], {user: items}, {user: 20},
                                      {user: seen}, popular)
        want = features(offline.user, offline.cands, offline.neighbours, meta, popular)
        # --- the API's side
        long_term, fresh, _ = model.user_vector_parts([user])
        query = np.asarray(query_at(long_term[0].tolist(), fresh[0].tolist(), last, asked,
                                    model.session_half_life_s), dtype=np.float32)
        lists = {}
        for h in dict.fromkeys(items):
            nid, sims = model.similar_items(h, 100)
            lists[h] = list(zip(nid, sims.tolist(), strict=True))
        boost = sparse_query(recent, {h: lists[h] for h in sparse_sources(recent, sparse)},
                             sparse, session_gate(asked - last, model.session_half_life_s))
        sizes = SourceSizes()  # what the settings give both sides
        (hits,) = index.search(query[None, :], sizes.ann, exclude=sorted(seen),
                               boosts=[boost])
        props = proposals(hits, boost, popular, sizes.cooc, sizes.popular, seen)
        got = rank(None, recent, 20, props, lists, meta, popular)
        assert got.cands.ids == offline.cands.ids, user
        np.testing.assert_allclose(got.feats, want, rtol=1e-4, atol=1e-5)


def test_a_ranker_travels_as_text_and_refuses_other_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    ranker = train_ranker(x, y, [20] * 20, RankerParams(rounds=10, min_data_in_leaf=5))
    again = Ranker.from_text(ranker.to_text())
    np.testing.assert_allclose(again.predict(x), ranker.predict(x))
    assert again.version == ranker.version and again.info["examples"] == 20
    save_ranker(tmp_path, ranker)
    assert load_latest_ranker(tmp_path).version == ranker.version  # type: ignore[union-attr]
    doc = ranker.to_text().replace('"knn_recent"', '"something_else"')
    with pytest.raises(RankerError, match="other features"):
        Ranker.from_text(doc)
    with pytest.raises(RankerError, match="does not load"):
        Ranker.from_text("{not json")


def test_examples_keep_positives_sample_negatives_and_drop_empty_choices() -> None:
    ex = Examples(capacity=2, negatives=3, seed=0)
    x = np.arange(10 * len(FEATURES), dtype=np.float32).reshape(10, -1)
    chosen = np.zeros(10, dtype=bool)
    assert not ex.add(x, chosen) and len(ex) == 0
    chosen[4] = True
    for _ in range(3):
        assert ex.add(x, chosen)
    assert len(ex) == 2 and ex.offered == 4 and ex.added == 3  # the window keeps 2
    rows, labels = ex.groups[0]
    assert len(rows) == 4 and labels.sum() == 1 and rows[0, 0] == x[4, 0]


def test_the_ranker_beats_retrieval_alone_on_a_held_out_slice() -> None:
    """MovieLens in time order: a hybrid trained on the first half, then 20,000 events
    streamed as the worker does (candidates before each batch, labelled by what each
    user chose). A ranker trained on the first 60% of those examples must put the chosen
    item in its top 10 more often than the retrieval order on the last 40%."""
    from datasets import movielens
    from experiments.evaluate import new_model
    from models.training import DEFAULT_EPOCHS, fit

    data = movielens.load(Settings.from_env().cache_dir)
    events = EventBatch.from_interactions(data.interactions.sorted_by_time())
    head = events.take(slice(0, len(events) // 2))
    model = new_model("hybrid", "prequential", data)
    fit(model, head, epochs=DEFAULT_EPOCHS["hybrid"])
    ranked = RankedModel(model, {i.item_id: i.attributes for i in data.iter_items()},
                         retrain_every=10**12)
    ranked.side.observe([str(u) for u in head.users], [str(i) for i in head.items],
                        head.ts_ms.tolist())
    kept = replay_examples(ranked, events.take(slice(len(head), len(head) + 20_000)))
    groups = list(ranked.examples.groups)
    assert kept == len(groups) > 1500
    # trained on the older 60% (sampled negatives), scored on the newer 40% with every
    # candidate, as served (the newest examples are also kept whole)
    cut = int(len(groups) * 0.6)
    n_test = min(len(groups) - cut, len(ranked.examples.full))
    train, test = groups[: len(groups) - n_test], list(ranked.examples.full)[-n_test:]
    assert n_test > 500
    ranker = train_ranker(np.vstack([g[0] for g in train]),
                          np.concatenate([g[1] for g in train]), [len(g[1]) for g in train])
    col = FEATURES.index("ann_score")

    def hits(score: object) -> float:
        return float(np.mean([g[1][np.argsort(-score(g[0]), kind="stable")[:10]].sum()  # type: ignore[operator]
                              for g in test]))

    by_ranker = hits(ranker.predict)
    by_retrieval = hits(lambda x: np.nan_to_num(x[:, col], nan=-1e12))
    assert by_ranker > by_retrieval * 1.02, (by_ranker, by_retrieval)


def test_the_worker_and_the_api_take_the_same_number_of_candidates_by_default() -> None:
    from ranking.offline import SourceSizes

    s = Settings()
    assert SourceSizes() == SourceSizes(s.rank_ann, s.rank_cooc, s.rank_popular)


def test_a_ranker_is_published_only_if_it_beats_retrieval_beyond_chance() -> None:
    """Held-out examples where retrieval (``ann_score``) already finds the chosen item
    and one feature predicts it better: a ranker that learned that feature passes the
    paired test; one trained on shuffled labels does not."""
    rng = np.random.default_rng(3)
    col_ann, col_key = FEATURES.index("ann_score"), FEATURES.index("knn_recent")

    def examples(n: int, shuffled: bool = False) -> Examples:
        ex = Examples(capacity=n, negatives=30, full=n)
        for _ in range(n):
            x = rng.normal(size=(60, len(FEATURES))).astype(np.float32)
            chosen = np.zeros(60, dtype=bool)
            chosen[int(rng.integers(60))] = True
            j = int(np.flatnonzero(chosen)[0])
            x[j, col_key] += 3.0  # the feature that gives the choice away
            x[j, col_ann] += 0.5  # retrieval sees it a little
            if shuffled:
                rng.shuffle(chosen)
            ex.add(x, chosen)
        return ex

    good = examples(1500).fit(RankerParams(rounds=30, min_data_in_leaf=20))
    held = good.info["held_out"]
    assert held["only_ranker"] > held["only_retrieval"] and held["p_value"] < 0.05
    assert good.beats_retrieval()
    noise = examples(1500, shuffled=True).fit(RankerParams(rounds=30, min_data_in_leaf=20))
    assert not noise.beats_retrieval(), noise.info["held_out"]


def test_the_popular_table_follows_a_new_list_even_at_a_reused_address() -> None:
    from ranking.features import popular_table

    assert popular_table([("a", 2.0), ("b", 1.0)])["b"] == (1.0, 0.5)
    # the first list is gone: a new one of the same length may take its address
    assert popular_table([("b", 4.0), ("a", 1.0)])["b"] == (0.0, 1.0)
