"""Offline and streaming evaluation: the exact protocols of the tracker's issue 3.

* ``loo`` (NCF, He et al. 2017): hold out each user's latest interaction, rank it among
  99 sampled items the user never touched; HR@10 and NDCG@10.
* ``full``: per-user random 75/25 split; rank every item outside the user's training
  set; precision/recall/NDCG/MAP@10.
* ``prequential`` (test-then-learn, Vinagre et al. 2014): replay the log in time order,
  recommend before learning each event; recall@10.

Determinism choices (stated so that other implementations can match them):
users are visited in ascending *numeric* id order when every id is an integer string
(MovieLens), otherwise lexicographic; "item id order" is the same rule; a user's
interactions are ordered by (timestamp, item id) before any per-user split; a model
that cannot score an item (never seen) ranks it last; a negative scoring *equal* to
the held-out item ranks above it (pessimistic ties).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from datasets.types import Interactions
from models.base import Recommender
from models.events import EventBatch

K = 10


# --- metrics -------------------------------------------------------------------------
def rank_of_positive(pos_score: float, neg_scores: np.ndarray) -> int:
    """0-based rank of the positive: negatives scoring >= it rank above it.

    NaN (unscorable) counts as the lowest score.

    >>> rank_of_positive(0.5, np.array([0.9, 0.5, 0.1]))
    2
    """
    pos = -math.inf if math.isnan(pos_score) else pos_score
    neg = np.where(np.isnan(neg_scores), -math.inf, neg_scores)
    return int((neg >= pos).sum())


def hit_and_ndcg(rank: int, k: int = K) -> tuple[float, float]:
    """HR@k and NDCG@k of a single held-out item at 0-based ``rank``.

    >>> hit_and_ndcg(0), hit_and_ndcg(2)[1] == 1 / math.log2(4), hit_and_ndcg(10)
    ((1.0, 1.0), True, (0.0, 0.0))
    """
    if rank >= k:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(rank + 2)


def topk_metrics(recommended: Sequence[str], relevant: set[str], k: int = K
                 ) -> dict[str, float]:
    """Precision, recall, NDCG (binary gains, log2 discount, ideal over min(|rel|, k))
    and MAP (average precision normalised by min(|rel|, k)) of one ranked list.

    >>> m = topk_metrics(["a", "x", "b"], {"a", "b", "c"}, k=3)
    >>> round(m["precision"], 4), round(m["recall"], 4), round(m["map"], 4)
    (0.6667, 0.6667, 0.5556)
    """
    top = list(recommended)[:k]
    hits = [1.0 if item in relevant else 0.0 for item in top]
    n_hits = sum(hits)
    dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
    n_ideal = min(len(relevant), k)
    idcg = sum(1.0 / math.log2(j + 2) for j in range(n_ideal))
    ap, running = 0.0, 0.0
    for j, h in enumerate(hits):
        if h:
            running += 1
            ap += running / (j + 1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(relevant) if relevant else 0.0,
        "ndcg": dcg / idcg if idcg else 0.0,
        "map": ap / n_ideal if n_ideal else 0.0,
    }


# --- ordering helpers ----------------------------------------------------------------
def id_order(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Indices that sort ``ids`` numerically if all are integers, else as strings."""
    arr = np.asarray(ids).astype(str)
    if len(arr) and all(s.isdigit() for s in np.unique(arr).tolist()):
        return np.argsort(arr.astype(np.int64), kind="stable")
    return np.argsort(arr, kind="stable")


def sorted_ids(ids: Sequence[str] | np.ndarray) -> list[str]:
    """Distinct ``ids`` in :func:`id_order`."""
    uniq = np.unique(np.asarray(ids).astype(str))
    return uniq[id_order(uniq)].tolist()


def _user_groups(inter: Interactions) -> dict[str, np.ndarray]:
    """Row indices of each user's interactions, ordered by (timestamp, item id)."""
    item_key = np.argsort(id_order(inter.items))  # rank of each row's item in id order
    order = np.lexsort((item_key, inter.ts_ms))
    users = inter.users[order]
    groups: dict[str, list[int]] = {}
    for row, u in zip(order.tolist(), users.tolist(), strict=True):
        groups.setdefault(u, []).append(row)
    return {u: np.asarray(rows, dtype=np.int64) for u, rows in groups.items()}


# --- leave-one-out -------------------------------------------------------------------
@dataclass(frozen=True)
class LooSplit:
    train: Interactions
    users: list[str]  # ascending id order
    held_out: list[str]  # held-out item per user
    negatives: list[list[str]]  # 99 sampled items per user
    held_out_ts: list[int] = field(default_factory=list)  # when it happened (epoch ms)


def loo_split(inter: Interactions, n_negatives: int = 99, seed: int = 42) -> LooSplit:
    """Hold out each user's latest interaction (ties: the larger item id counts as later)
    and draw ``n_negatives`` never-interacted items per user with one
    ``default_rng(seed)``, users in ascending id order, candidates in ascending id order.
    Users with a single interaction are not evaluated (nothing left to train on).
    """
    groups = _user_groups(inter)
    all_items = sorted_ids(inter.items)
    rng = np.random.default_rng(seed)
    test_rows, users, held, negs, times = [], [], [], [], []
    for u in sorted_ids(list(groups)):
        rows = groups[u]
        if len(rows) < 2:
            continue
        test_rows.append(rows[-1])
        touched = set(inter.items[rows].tolist())
        candidates = [i for i in all_items if i not in touched]
        users.append(u)
        held.append(str(inter.items[rows[-1]]))
        times.append(int(inter.ts_ms[rows[-1]]))
        negs.append([str(x) for x in rng.choice(candidates, n_negatives, replace=False)])
    mask = np.ones(len(inter), dtype=bool)
    mask[np.asarray(test_rows, dtype=np.int64)] = False
    return LooSplit(inter.take(mask), users, held, negs, times)


def evaluate_loo(model: Recommender, split: LooSplit, k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of a model trained on ``split.train``, each user asked at the
    time of their held-out event (a user asks for recommendations when they act; only
    session-aware models use the time)."""
    n_cand = 1 + len(split.negatives[0]) if split.negatives else 0
    users = [u for u in split.users for _ in range(n_cand)]
    items = [x for pos, negs in zip(split.held_out, split.negatives, strict=True)
             for x in [pos, *negs]]
    with model.asked_at(dict(zip(split.users, split.held_out_ts, strict=True))):
        scores = model.score(users, items).reshape(len(split.users), n_cand)
    hr = nd = 0.0
    for row in scores:
        h, n = hit_and_ndcg(rank_of_positive(float(row[0]), row[1:]), k)
        hr += h
        nd += n
    n_users = max(len(split.users), 1)
    return {f"hr@{k}": hr / n_users, f"ndcg@{k}": nd / n_users}


# --- full ranking --------------------------------------------------------------------
@dataclass(frozen=True)
class FullSplit:
    train: Interactions
    test: dict[str, set[str]]  # user -> held-out items (non-empty only)


def full_split(inter: Interactions, train_fraction: float = 0.75, seed: int = 42) -> FullSplit:
    """Per user (ascending id order, one ``default_rng(seed)``): permute the user's
    interactions (taken in (timestamp, item id) order) and put the first
    ``max(1, floor(train_fraction · n))`` in training, the rest in test."""
    groups = _user_groups(inter)
    rng = np.random.default_rng(seed)
    train_rows: list[np.ndarray] = []
    test: dict[str, set[str]] = {}
    for u in sorted_ids(list(groups)):
        rows = groups[u][rng.permutation(len(groups[u]))]
        n_train = max(1, math.floor(train_fraction * len(rows)))
        train_rows.append(rows[:n_train])
        if len(rows) > n_train:
            test[u] = set(inter.items[rows[n_train:]].tolist())
    train = inter.take(np.sort(np.concatenate(train_rows)))
    return FullSplit(train, test)


def evaluate_full(model: Recommender, split: FullSplit, k: int = K) -> dict[str, float]:
    """precision/recall/NDCG/MAP@k over users with test items; items in the user's
    training set are excluded (the model's seen items are exactly its training set)."""
    users = sorted_ids(list(split.test))
    ids, _ = model.recommend(users, k, exclude_seen=True)
    sums = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0}
    for u, recs in zip(users, ids, strict=True):
        for name, v in topk_metrics(recs.tolist(), split.test[u], k).items():
            sums[name] += v
    n = max(len(users), 1)
    return {f"{name}@{k}": v / n for name, v in sums.items()}


# --- prequential ---------------------------------------------------------------------
def prequential(model: Recommender, inter: Interactions, bootstrap: Callable[
                [Recommender, EventBatch], object], bootstrap_fraction: float = 0.2,
                k: int = K, limit: int | None = None) -> dict[str, float]:
    """Test-then-learn over the log in time order, strictly one event at a time.

    The first ``bootstrap_fraction`` of events (time order) is handed to
    ``bootstrap(model, events)``; then for every later event whose user the model
    already knows, the top-``k`` (seen items excluded) is computed *before* the model
    learns that event; a hit is the event's item in that list. ``limit`` caps the
    number of streamed events (smoke tests). Learning throughput is timed over the
    ``learn_many`` calls only.
    """
    events = EventBatch.from_interactions(inter.sorted_by_time())
    n_boot = int(len(events) * bootstrap_fraction)
    bootstrap(model, events.take(slice(0, n_boot)))
    stream = events.take(slice(n_boot, None if limit is None else n_boot + limit))
    hits = evaluated = 0
    learn_s = 0.0
    for j in range(len(stream)):
        user = str(stream.users[j])
        if model.knows_user(user):
            with model.asked_at({user: int(stream.ts_ms[j])}):
                ids, _ = model.recommend([user], k, exclude_seen=True)
            hits += int(str(stream.items[j]) in set(ids[0].tolist()))
            evaluated += 1
        event = stream.take(slice(j, j + 1))
        t0 = time.perf_counter()
        model.learn_many(event)
        learn_s += time.perf_counter() - t0
    return {f"recall@{k}": hits / max(evaluated, 1),
            "learn_events_per_s": len(stream) / max(learn_s, 1e-9),
            "evaluated": float(evaluated)}


def prequential_validation_log(inter: Interactions, bootstrap_fraction: float = 0.2
                               ) -> Interactions:
    """The part of the log a prequential *validation* run may use: the bootstrap part.

    The test protocol bootstraps on the first ``bootstrap_fraction`` of the time-ordered
    log and scores everything after it, so validation must stay inside that first part
    (it then runs the same protocol on it: bootstrap on its first fifth, stream the rest).
    A validation slice reaching past it would tune on events the test scores.
    """
    ordered = inter.sorted_by_time()
    return ordered.take(slice(0, int(len(ordered) * bootstrap_fraction)))


def digest(*parts: object) -> str:
    """First 16 hex digits of a SHA-256 over ``parts`` (arrays and lists by value, sets
    sorted, mappings by sorted key), so two runs can show they evaluated the same split.

    >>> digest(np.array(["a", "b"]), {"y", "x"}) == digest(["a", "b"], ["x", "y"])
    True
    >>> digest({"u": {"x", "y"}}) == digest({"u": {"y", "x"}}) != digest({"u": {"x"}})
    True
    """
    h = hashlib.sha256()
    for part in parts:
        h.update(_canonical(part))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _canonical(part: object) -> bytes:
    if isinstance(part, Mapping):
        return b"".join(f"{k}\x01".encode() + _canonical(part[k]) + b"\x02"
                        for k in sorted(part))
    if isinstance(part, set | frozenset):
        part = sorted(part)
    if isinstance(part, str):
        return part.encode()
    return np.asarray(part).astype(str).tobytes()


def interactions_digest(inter: Interactions) -> str:
    """:func:`digest` of a log's users, items, ratings and timestamps, in its row order."""
    return digest(inter.users, inter.items, inter.ratings, inter.ts_ms)


def loo_digest(split: LooSplit) -> str:
    """:func:`digest` of a leave-one-out split: training log, held-out items, negatives."""
    return digest(interactions_digest(split.train), split.users, split.held_out,
                  np.asarray(split.negatives))


def full_digest(split: FullSplit) -> str:
    """:func:`digest` of a full-ranking split: training log and each user's test set."""
    return digest(interactions_digest(split.train), split.test)


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average of metric dicts with the same keys."""
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} if rows else {}


# --- responsiveness (issue 11) -------------------------------------------------------
def responsiveness(model: Recommender, genres: Mapping[str, Sequence[str]],
                   popularity: Mapping[str, float], clicks: int = 5, k: int = K,
                   min_titles: int = 50, ts_ms: int = 0, seed: int = 0
                   ) -> dict[str, float]:
    """Genre shift after a few clicks: does the list follow what the user does now?

    For every user the (bootstrapped) ``model`` knows, in id order: pick, with one
    ``default_rng(seed)``, a genre among those with at least ``min_titles`` titles
    (``genres``: item id → its genres) of which the user has seen none; measure that
    genre's share of the user's top ``k`` (seen items excluded); stream ``clicks`` click
    events on the genre's most ``popularity``-popular titles one at a time
    (``learn_many``, as the worker applies them) and measure again, clicked items
    excluded too. Each user is measured on a copy of the model, so one user's clicks
    never move another's list. ``catalogue_share`` is the mean share of the picked
    genres in the catalogue (what a random list would show).
    """
    import copy

    by_genre: dict[str, list[str]] = {}
    for item, gs in genres.items():
        for g in gs:
            by_genre.setdefault(g, []).append(item)
    big = sorted(g for g, items in by_genre.items() if len(items) >= min_titles)
    n_catalogue = len(genres)
    rng = np.random.default_rng(seed)
    before = after = share = 0.0
    n = 0
    for user in sorted_ids(list(model.user_ids.ids)):
        row = int(model.user_ids.lookup([user])[0])
        touched = {g for i in model.item_ids.ids_of(sorted(model.seen.of(row)))
                   for g in genres.get(i, ())}
        options = [g for g in big if g not in touched]
        if not options:
            continue
        genre = options[int(rng.integers(len(options)))]
        members = set(by_genre[genre])
        titles = sorted(members, key=lambda i: (-popularity.get(i, 0.0), i))[:clicks]
        ids, _ = model.recommend([user], k, exclude_seen=True)
        before += sum(i in members for i in ids[0].tolist()) / k
        clone = copy.deepcopy(model)
        for item in titles:
            clone.learn_many(EventBatch.of([user], [item], event="click", ts_ms=ts_ms))
        ids, _ = clone.recommend([user], k, exclude_seen=True)
        after += sum(i in members for i in ids[0].tolist()) / k
        share += len(members) / n_catalogue
        n += 1
    n = max(n, 1)
    return {"genre_share_before": before / n, "genre_share_after": after / n,
            "catalogue_share": share / n, "users": float(n), "clicks": float(clicks)}
