"""Features of (user, candidate) pairs: the one definition training and serving share.

Why one module: a ranker learns from the features the worker computes and is served
with the features the API computes; any difference between the two (training/serving
skew) silently costs what the ranker learned. Both call :func:`features` on the same
inputs, gathered from their own state:

- the candidates and each source's score (:class:`Candidates`, :func:`merge`);
- the user's recent items, oldest first, and their event count (:class:`UserContext`);
- the co-occurrence lists of the recent items (what the worker exports to Redis);
- each candidate's attributes (its catalogue metadata: ``genres``, ``year``);
- the popular list (decayed counts, best first) and its trend.

Everything is plain numpy on a few hundred candidates (no torch: the API imports it).
Scores whose scale depends on the stream's history (decayed counts) enter as ranks and
as ratios to the best, so a ranker trained at one moment serves at another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Candidate sources, in column order of :attr:`Candidates.scores`.
SOURCES = ("ann", "cooc", "popular", "fresh")

#: Column names of :func:`features`, in order.
FEATURES = (
    *(f"{s}_score" for s in SOURCES),
    *(f"{s}_rank" for s in SOURCES),
    "n_sources",
    "knn_recent", "knn_max", "knn_last", "knn_hits",
    "pop_rel", "pop_rank", "pop_trend",
    "genre_affinity", "genre_max", "since_similar",
    "item_year", "year_gap",
    "user_events", "user_recent",
)

#: Rank given to a candidate a source did not propose (ranks are 0-based).
ABSENT_RANK = 1000.0

#: Per-event decay of the recent items' weight in ``knn_recent`` (0 = newest).
RECENCY = 0.9

Metadata = Mapping[str, object]


@dataclass(frozen=True)
class UserContext:
    """The user as both sides know them: recent items oldest first (repeats allowed),
    and how many events they ever had."""

    recent: Sequence[str]
    n_events: int


@dataclass(frozen=True)
class Candidates:
    """De-duplicated candidates and each source's score and rank (NaN / ABSENT_RANK where
    a source did not propose the item)."""

    ids: list[str]
    scores: np.ndarray  # (n, len(SOURCES)) float64
    ranks: np.ndarray  # (n, len(SOURCES)) float64

    def sources_of(self, j: int) -> list[str]:
        """Names of the sources that proposed candidate ``j``."""
        return [s for s, x in zip(SOURCES, self.scores[j], strict=True) if not math.isnan(x)]

    def __len__(self) -> int:
        return len(self.ids)


def merge(proposals: Mapping[str, Sequence[tuple[str, float]]],
          skip: set[str] | frozenset[str] = frozenset()) -> Candidates:
    """Union of each source's ``[(item, score)]`` (best first), items in ``skip`` left
    out; an item keeps every source's score and its rank in that source."""
    unknown = set(proposals) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown candidate sources {sorted(unknown)}; known: {SOURCES}")
    index: dict[str, int] = {}
    cols: list[tuple[int, list[int], list[float]]] = []  # (source, candidates, scores)
    for col, source in enumerate(SOURCES):
        js: list[int] = []
        vs: list[float] = []
        for item, score in proposals.get(source, ()):
            if item in skip:
                continue
            js.append(index.setdefault(item, len(index)))
            vs.append(score)
        cols.append((col, js, vs))
    n = len(index)
    scores = np.full((n, len(SOURCES)), np.nan)
    ranks = np.full((n, len(SOURCES)), ABSENT_RANK)
    for col, js, vs in cols:
        if js:
            scores[js, col] = vs
            ranks[js, col] = np.arange(len(js))
    return Candidates(list(index), scores, ranks)


def best_first(scores: Mapping[str, float] | Sequence[tuple[str, float]], n: int,
               skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, float]]:
    """The ``n`` best non-zero ``(item, score)`` not in ``skip``, ties broken by item id:
    how the worker and the API both order a source given as scores (the same order on
    both sides, whatever order the scores arrived in)."""
    pairs = scores.items() if isinstance(scores, Mapping) else scores
    kept = [(i, float(s)) for i, s in pairs if s != 0.0 and i not in skip]
    kept.sort(key=lambda x: (-x[1], x[0]))
    return kept[:n]


def proposals(ann: Sequence[tuple[str, float]],
              cooc: Mapping[str, float] | Sequence[tuple[str, float]] | None,
              popular: Sequence[tuple[str, float]], n_cooc: int, n_popular: int,
              skip: set[str] | frozenset[str]) -> dict[str, list[tuple[str, float]]]:
    """Each source's proposals, best first, ``skip`` left out: ``ann`` as retrieved,
    ``cooc`` (the sparse part's scores) its best ``n_cooc``, ``popular`` its first
    ``n_popular``. The worker (:func:`ranking.offline.model_inputs`) and the API form
    them here, so both give :func:`merge` the same lists."""
    out: dict[str, list[tuple[str, float]]] = {
        "ann": [(i, s) for i, s in ann if i not in skip]}
    if cooc:
        out["cooc"] = best_first(cooc, n_cooc, skip)
    out["popular"] = [(i, s) for i, s in popular if i not in skip][:n_popular]
    return out


def _genres(meta: Metadata | None) -> Sequence[str]:
    g = meta.get("genres") if meta else None
    return g if isinstance(g, list | tuple) else ()


def _year(meta: Metadata | None) -> float:
    y = meta.get("year") if meta else None
    return float(y) if isinstance(y, int | float) and not isinstance(y, bool) else math.nan


#: item → (its metadata object, genres, year): read once per metadata object (both
#: sides keep an item's metadata object for many requests; a new object is read again).
_ATTRS: dict[str, tuple[object, Sequence[str], float]] = {}
_ATTRS_MAX = 500_000


def _attributes(item: str, meta: Metadata | None) -> tuple[Sequence[str], float]:
    entry = _ATTRS.get(item)
    if entry is not None and entry[0] is meta:
        return entry[1], entry[2]
    if len(_ATTRS) >= _ATTRS_MAX:
        _ATTRS.clear()
    genres, year = _genres(meta), _year(meta)
    _ATTRS[item] = (meta, genres, year)
    return genres, year


def features(user: UserContext, cands: Candidates,
             neighbours: Mapping[str, Sequence[tuple[str, float]]],
             metadata: Mapping[str, Metadata | None],
             popular: Sequence[tuple[str, float]],
             trend: Mapping[str, float] | None = None) -> np.ndarray:
    """``(len(cands), len(FEATURES))`` float32 matrix (NaN: unknown, as LightGBM reads
    it). ``neighbours``: each recent item's co-occurring items with their cosine;
    ``metadata``: the recent items' and candidates' attributes (missing: unknown);
    ``popular``: the popular list, best first; ``trend``: item → the rise of its rate
    (short-term over long-term decayed popularity), where known."""
    n = len(cands)
    out = np.full((n, len(FEATURES)), np.nan, dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    col = {name: c for c, name in enumerate(FEATURES)}
    ns = len(SOURCES)
    out[:, :ns] = cands.scores
    out[:, ns: 2 * ns] = cands.ranks
    out[:, col["n_sources"]] = (~np.isnan(cands.scores)).sum(axis=1)
    pos = {item: j for j, item in enumerate(cands.ids)}

    # co-occurrence with the recent items (newest weighs most)
    recent = list(user.recent)
    knn = [0.0] * n
    kmax = [0.0] * n
    klast = [0.0] * n
    khits = [0.0] * n
    seen_h: set[str] = set()
    for age, h in enumerate(reversed(recent)):
        if h in seen_h:
            continue
        seen_h.add(h)
        w = RECENCY ** age
        for item, cos in neighbours.get(h, ()):
            j = pos.get(item)
            if j is None:
                continue
            knn[j] += w * cos
            if cos > kmax[j]:
                kmax[j] = cos
            khits[j] += 1
            if age == 0:
                klast[j] = cos
    out[:, col["knn_recent"]] = knn
    out[:, col["knn_max"]] = kmax
    out[:, col["knn_last"]] = klast
    out[:, col["knn_hits"]] = khits

    # popularity now, relative to the best, and its trend
    table = popular_table(popular)
    absent = (ABSENT_RANK, 0.0)
    ranks_rel = [table.get(item, absent) for item in cands.ids]
    out[:, col["pop_rank"]] = [r for r, _ in ranks_rel]
    out[:, col["pop_rel"]] = [x for _, x in ranks_rel]
    if trend is not None:
        out[:, col["pop_trend"]] = [trend.get(item, math.nan) for item in cands.ids]

    # the user's taste in attributes against the item's
    shares: dict[str, float] = {}
    last_seen: dict[str, int] = {}  # genre -> events since the user last had one
    years: list[float] = []
    for age, h in enumerate(reversed(recent)):
        genres, y = _attributes(h, metadata.get(h))
        for g in genres:
            shares[g] = shares.get(g, 0.0) + 1.0
            last_seen.setdefault(g, age)
        if not math.isnan(y):
            years.append(y)
    total = sum(shares.values())
    mean_year = sum(years) / len(years) if years else math.nan
    nan = math.nan
    affinity, gmax, since, item_year = [nan] * n, [nan] * n, [nan] * n, [nan] * n
    for j, item in enumerate(cands.ids):
        gs, item_year[j] = _attributes(item, metadata.get(item))
        if gs and total:
            s = [shares.get(g, 0.0) / total for g in gs]
            affinity[j] = sum(s) / len(s)
            gmax[j] = max(s)
            ages = [last_seen[g] for g in gs if g in last_seen]
            since[j] = min(ages) if ages else len(recent)
    out[:, col["genre_affinity"]] = affinity
    out[:, col["genre_max"]] = gmax
    out[:, col["since_similar"]] = since
    years_arr = np.asarray(item_year)
    out[:, col["item_year"]] = years_arr
    out[:, col["year_gap"]] = years_arr - mean_year
    out[:, col["user_events"]] = math.log1p(user.n_events)
    out[:, col["user_recent"]] = len(recent)
    return out.astype(np.float32)


_TABLE: tuple[object, int, dict[str, tuple[float, float]]] = (None, -1, {})


def popular_table(popular: Sequence[tuple[str, float]]) -> dict[str, tuple[float, float]]:
    """``{item: (rank, score / best score)}`` of a popular list, kept for the last list
    seen: both sides read one list for many requests (the API's is replaced, never
    changed in place, when it is re-read; so is the worker's). The list itself is held
    and compared by identity: an ``id`` alone could be reused by the next list."""
    global _TABLE
    held, size, table = _TABLE
    if held is not popular or size != len(popular):
        top = popular[0][1] if popular and popular[0][1] > 0 else 0.0
        table = {item: (float(r), s / top if top else 0.0)
                 for r, (item, s) in enumerate(popular)}
        _TABLE = (popular, len(popular), table)
    return table


def retrieval_scores(cands: Candidates) -> np.ndarray:
    """The order without a ranker ("retrieval only"): the ``ann`` score, then the
    candidates it did not propose in their merge order, below every ``ann`` candidate."""
    ann = cands.scores[:, SOURCES.index("ann")]
    fallback = -1e12 - np.arange(len(cands), dtype=np.float64)
    return np.where(np.isnan(ann), fallback, ann)
