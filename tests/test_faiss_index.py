"""Pure logic of the item index (no HTTP): every index kind on seeded synthetic vectors."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import IndexNotReady, UnknownItem
from faiss_server.config import IndexSpec
from faiss_server.index import VectorIndex, as_matrix
from faiss_server.protocol import read_npz, write_npz
from faiss_server.service import IndexService

DIM = 16


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def spec(kind: str) -> IndexSpec:
    return IndexSpec(dim=DIM, kind=kind, ivf_nlist=8, ivf_nprobe=8, hnsw_ef_search=64)


def build(kind: str, n: int = 500) -> tuple[VectorIndex, np.ndarray, list[str]]:
    x = vectors(n)
    ids = [f"item-{i}" for i in range(n)]
    return VectorIndex.build(spec(kind), "v1", ids, x), x, ids


KINDS = ["flat", "hnsw", "ivf"]


@pytest.mark.parametrize("kind", KINDS)
def test_search_returns_exact_top_items_by_inner_product(kind: str) -> None:
    idx, x, ids = build(kind)
    q = x[:5]
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    got = idx.search(q, 10)
    for row, hits in zip(exact, got, strict=True):
        want = [ids[j] for j in row]
        overlap = len(set(want) & {h for h, _ in hits})
        assert overlap >= 9  # ANN kinds may swap a near-tie; flat is exact
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)
    assert got[0][0][0] == "item-0"


@pytest.mark.parametrize("kind", KINDS)
def test_excluded_ids_never_come_back_and_k_is_still_filled(kind: str) -> None:
    idx, x, ids = build(kind)
    first = [h for h, _ in idx.search(x[:1], 10)[0]]
    hits = idx.search(x[:1], 10, exclude=first[:5] + ["not-indexed"])[0]
    assert len(hits) == 10
    assert not set(first[:5]) & {h for h, _ in hits}


@pytest.mark.parametrize("kind", KINDS)
def test_a_boosted_search_is_the_exact_top_k_of_dense_plus_sparse(kind: str) -> None:
    """``boosts`` (the sparse part of a dense + sparse query) add to the inner products
    of their items; the answer is the top k of the sum, boosted items far down the
    dense list included, excluded and unknown ids never returned."""
    idx, x, ids = build(kind)
    rng = np.random.default_rng(3)
    q = x[7:9]
    boosts = [{ids[j]: float(rng.uniform(0.0, 1.5)) for j in rng.choice(len(ids), 40)}
              | {"not-indexed": 9.0}, {}]
    exclude = [ids[7], ids[int(np.argmax(q[0] @ x.T * 0))]]
    got = idx.search(q, 10, exclude=exclude, boosts=boosts)
    dense = (q.astype(np.float64) @ x.T.astype(np.float64))
    for r, (row, boost) in enumerate(zip(got, boosts, strict=True)):
        total = dense[r].copy()
        for item, value in boost.items():
            if item in idx.pos:
                total[idx.pos[item]] += value
        total[[idx.pos[e] for e in exclude]] = -np.inf
        want = [ids[j] for j in np.argsort(-total)[:10]]
        hits = [h for h, _ in row]
        assert len(set(want) & set(hits)) >= (10 if kind == "flat" else 9)
        assert not set(exclude) & set(hits) and "not-indexed" not in hits
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        for h, score in row:
            assert score == pytest.approx(total[idx.pos[h]], abs=1e-4)
    assert any(h in boosts[0] for h, _ in got[0])  # the boosts did change the answer


@pytest.mark.parametrize("kind", KINDS)
def test_a_search_within_only_is_exact_over_those_ids(kind: str) -> None:
    """``only`` (a filter resolved to ids): the exact top k among them, boosts added,
    excluded and unknown ids skipped; nothing outside ``only`` ever comes back."""
    idx, x, ids = build(kind)
    rng = np.random.default_rng(5)
    allowed = [ids[j] for j in 1 + rng.choice(len(ids) - 1, 60, replace=False)]
    exclude = allowed[:3]
    boosts = [{allowed[10]: 5.0, ids[0]: 9.0}, {}]
    q = x[20:22]
    got = idx.search(q, 10, exclude=exclude, boosts=boosts,
                     only=[*allowed, "not-indexed", allowed[5]])
    dense = q.astype(np.float64) @ x.T.astype(np.float64)
    rest = [a for a in allowed if a not in exclude]
    for r, row in enumerate(got):
        total = {a: dense[r][idx.pos[a]] + boosts[r].get(a, 0.0) for a in rest}
        want = sorted(rest, key=lambda a: -total[a])[:10]
        assert [h for h, _ in row] == want  # exact whatever the index kind
        for h, score in row:
            assert score == pytest.approx(total[h], abs=1e-4)
    assert got[0][0][0] == allowed[10]  # its boost lifted it; ids[0] is not allowed
    assert idx.search(q, 5, only=["not-indexed"]) == [[], []]


def test_boosts_must_match_the_queries() -> None:
    idx, x, _ = build("flat", 50)
    with pytest.raises(ValueError, match="boost objects"):
        idx.search(x[:2], 5, boosts=[{"item-1": 1.0}])


@pytest.mark.parametrize("kind", KINDS)
def test_similar_excludes_the_item_itself(kind: str) -> None:
    idx, _, _ = build(kind)
    hits = idx.similar("item-3", 5)
    assert len(hits) == 5 and "item-3" not in {h for h, _ in hits}
    with pytest.raises(UnknownItem):
        idx.similar("nope", 5)


@pytest.mark.parametrize("kind", KINDS)
def test_upsert_replaces_and_delete_removes(kind: str) -> None:
    idx, x, _ = build(kind)
    target = -x[0]  # opposite of item-0
    idx.upsert("item-1", as_matrix(target, DIM))  # existing id, new vector
    idx.upsert("new", as_matrix(target, DIM))
    top = {h for h, _ in idx.search(as_matrix(target, DIM), 2)[0]}
    assert top == {"item-1", "new"}
    assert len(idx) == 501
    idx.delete("new")
    assert "new" not in {h for h, _ in idx.search(as_matrix(target, DIM), 5)[0]}
    assert len(idx) == 500
    with pytest.raises(UnknownItem):
        idx.delete("new")
    np.testing.assert_allclose(idx.vector("item-1")[0], target, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_keeps_ids_version_and_tombstones(kind: str, tmp_path) -> None:
    idx, x, _ = build(kind)
    idx.delete("item-7")
    idx.upsert("item-8", as_matrix(x[9], DIM))
    idx.save(tmp_path / "v1")
    back = VectorIndex.load(tmp_path / "v1")
    assert back.version == "v1" and back.spec == idx.spec and len(back) == len(idx)
    assert back.search(x[:3], 10) == idx.search(x[:3], 10)
    assert "item-7" not in back


def test_build_keeps_the_last_row_of_a_repeated_id() -> None:
    x = vectors(3)
    idx = VectorIndex.build(spec("flat"), "v", ["a", "b", "a"], x)
    assert len(idx) == 2
    np.testing.assert_allclose(idx.vector("a")[0], x[2])


def test_as_matrix_rejects_wrong_dimension_and_nan() -> None:
    with pytest.raises(ValueError, match="dimension"):
        as_matrix([[1.0, 2.0]], DIM)
    bad = np.zeros(DIM)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        as_matrix(bad, DIM)


def test_ivf_service_is_not_ready_until_a_version_is_loaded(tmp_path) -> None:
    svc = IndexService(spec("ivf"), tmp_path)
    svc.start()
    with pytest.raises(IndexNotReady):
        svc.search(vectors(1), 5)
    svc.load_version("v1", [f"i{n}" for n in range(400)], vectors(400))
    assert svc.search(vectors(1), 5)[0] == "v1"


def test_service_persists_versions_and_reloads_the_current_one(tmp_path) -> None:
    svc = IndexService(spec("flat"), tmp_path)
    svc.start()
    svc.load_version("v1", ["a", "b"], vectors(2))
    svc.load_version("v2", ["c"], vectors(1, seed=5))
    svc.upsert("d", vectors(1, seed=6))
    svc.snapshot()
    again = IndexService(spec("flat"), tmp_path)
    again.start()
    assert again.info()["version"] == "v2" and again.info()["size"] == 2
    assert (tmp_path / "versions" / "v1" / "index.faiss").exists()


def test_writes_during_a_load_are_replayed_onto_the_new_version(tmp_path) -> None:
    svc = IndexService(spec("flat"), None)
    svc.start()
    x = vectors(3)
    # Simulate an upsert that lands while the build runs, by opening the journal as
    # load_version does and swapping by hand.
    svc._journal = []
    svc.upsert("late", x[0])
    new = VectorIndex.build(spec("flat"), "v2", ["a"], x[1:2])
    svc._swap(new)
    assert "late" in svc.current and svc.current.version == "v2"


def test_npz_round_trip_has_no_pickle() -> None:
    ids, x = ["a", "bé"], vectors(2)
    back_ids, back_x = read_npz(write_npz(ids, x))
    assert back_ids == ids
    np.testing.assert_array_equal(back_x, x)


def test_bad_version_names_are_rejected() -> None:
    svc = IndexService(spec("flat"))
    svc.start()
    with pytest.raises(ValueError):
        svc.load_version("../etc", ["a"], vectors(1))
