"""The ranker's inputs computed from a model in process: what the API would gather.

The worker (training examples from the stream) and the offline evaluation use this; the
API gathers the same inputs from FAISS, Redis and the user's document
(:mod:`recommender_server.ranking`). Each source mirrors its served form:

- ``ann``: the model's full retrieval score (dense inner product plus the sparse
  co-occurrence part, the raw inner product FAISS returns), top ``n_ann``;
- ``cooc``: the sparse part alone (what the API adds to the FAISS query), top ``n_cooc``;
- ``popular``: the popular list, top ``n_popular`` not seen;
- the co-occurrence lists of the recent items: the model's ``cooc.similar`` top
  ``served`` (what the worker exports to Redis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.base import Recommender
from models.hybrid import SessionCooc
from ranking.features import (
    Candidates,
    UserContext,
    features,
    merge,
    proposals,
    retrieval_scores,
)
from ranking.ranker import Examples, Ranker, RankerParams


@dataclass(frozen=True)
class SourceSizes:
    """How many candidates each source proposes (the defaults are the settings'
    ``RECSYS_RANK_*``; the worker passes the settings it runs with)."""

    ann: int = 100
    cooc: int = 30
    popular: int = 20


@dataclass(frozen=True)
class RankInputs:
    """Everything :func:`ranking.features.features` needs for one user."""

    user: UserContext
    cands: Candidates
    neighbours: dict[str, list[tuple[str, float]]]


@torch.no_grad()
def model_inputs(model: Recommender, users: Sequence[str],
                 recent: Mapping[str, Sequence[str]], n_events: Mapping[str, int],
                 seen: Mapping[str, set[str]], popular: Sequence[tuple[str, float]],
                 sizes: SourceSizes = SourceSizes(), served: int = 100,
                 block: int = 256) -> list[RankInputs]:
    """:class:`RankInputs` of ``users`` (all known to ``model``); ``seen`` items are
    never candidates."""
    out: list[RankInputs] = []
    ids = model.item_ids
    cooc = getattr(model, "cooc", None)
    nbr_cache: dict[str, list[tuple[str, float]]] = {}
    for start in range(0, len(users), block):
        part = list(users[start: start + block])
        rows = model._user_rows(part)
        inner = model._inner_all(rows).numpy().astype(np.float64)
        sparse = (model._sparse(model.cooc.user_scores(model.history, rows), rows)
                  if isinstance(model, SessionCooc) else None)
        for j, user in enumerate(part):
            skip = seen.get(user, set())
            skip_rows = [r for r in ids.lookup(list(skip)).tolist() if r >= 0]
            score = inner[j].copy()
            score[skip_rows] = -np.inf
            top = np.argsort(-score, kind="stable")[: sizes.ann]
            top = top[np.isfinite(score[top])]
            ann = list(zip(ids.ids_of(top.tolist()), score[top].tolist(), strict=True))
            cooc_scores = None
            if sparse is not None:
                nz = np.flatnonzero(sparse[j])
                cooc_scores = list(zip(ids.ids_of(nz.tolist()), sparse[j][nz].tolist(),
                                       strict=True))
            props = proposals(ann, cooc_scores, popular, sizes.cooc, sizes.popular, skip)
            neighbours: dict[str, list[tuple[str, float]]] = {}
            if cooc is not None:
                for h in dict.fromkeys(recent.get(user, ())):
                    if h not in nbr_cache:
                        r = int(ids.lookup([h])[0])
                        if r < 0:
                            nbr_cache[h] = []
                        else:
                            rr, sims = cooc.similar(r, served)
                            nbr_cache[h] = list(zip(ids.ids_of(rr.tolist()), sims.tolist(),
                                                    strict=True))
                    neighbours[h] = nbr_cache[h]
            out.append(RankInputs(UserContext(list(recent.get(user, ())),
                                              int(n_events.get(user, 0))),
                                  merge(props), neighbours))
    return out


class StreamSide:
    """What the serving side knows besides the model, kept from the same events: each
    user's recent items (the document's ``recent``) and event count, and the decayed
    popular list (what the worker writes to Redis)."""

    def __init__(self, recent_size: int = 50, half_life_s: float = 7 * 24 * 3600.0,
                 popular_size: int = 1000) -> None:
        from streams.state import DecayedPopularity  # the worker's own decay

        self.recent_size = recent_size
        self.popular_size = popular_size
        self.recent: dict[str, list[str]] = {}
        self.n_events: dict[str, int] = {}
        self.pop = DecayedPopularity(half_life_s)
        self.counts: dict[str, float] = {}
        self._popular: list[tuple[str, float]] | None = None

    def observe(self, users: Sequence[str], items: Sequence[str],
                ts_ms: Sequence[int]) -> None:
        for u, i, t in zip(users, items, ts_ms, strict=True):
            r = self.recent.setdefault(u, [])
            r.append(i)
            del r[: -self.recent_size]
            self.n_events[u] = self.n_events.get(u, 0) + 1
            for item, inc in self.pop.increments([(i, 1.0, int(t))]).items():
                self.counts[item] = self.counts.get(item, 0.0) + inc
        self._popular = None

    def popular(self) -> list[tuple[str, float]]:
        if self._popular is None:
            best = sorted(self.counts.items(), key=lambda x: (-x[1], x[0]))
            self._popular = best[: self.popular_size]
        return self._popular


class RankedModel:
    """A retrieval model plus a ranker trained from the stream, as the evaluation
    protocols ask a model: ``recommend`` ranks the merged candidates, ``learn_many``
    labels the candidates last computed for each user with what they chose next (the
    training example the worker collects), then learns the events. The ranker is
    retrained every ``retrain_every`` examples on the window.
    """

    def __init__(self, model: Recommender, metadata: Mapping[str, Mapping[str, object]],
                 side: StreamSide | None = None, params: RankerParams | None = None,
                 retrain_every: int = 5000, min_examples: int = 1000,
                 window: int = 20_000, sizes: SourceSizes = SourceSizes()) -> None:
        self.model = model
        self.sizes = sizes
        self.metadata = metadata
        self.side = side or StreamSide()
        self.params = params or RankerParams()
        self.examples = Examples(window, self.params.negatives)
        self.retrain_every = retrain_every
        self.min_examples = min_examples
        self.ranker: Ranker | None = None
        self._since = 0
        self.rankers: list[dict[str, object]] = []  # every ranker trained, kept or not
        self._pending: dict[str, tuple[RankInputs, np.ndarray]] = {}
        self._shadow: dict[str, tuple[list[str], list[str]]] = {}
        #: While a ranker served: tests, and hits of its list and of the retrieval
        #: order's on the same candidates (the ranker's gain where it is in use).
        self.while_ranked = {"events": 0, "ranker_hits": 0, "retrieval_hits": 0}

    def __getattr__(self, name: str) -> object:  # everything else is the model's
        return getattr(self.model, name)

    def inputs(self, users: Sequence[str]) -> list[tuple[RankInputs, np.ndarray]]:
        seen = {u: {i for i in self.model.item_ids.ids_of(
            sorted(self.model.seen.of(int(self.model.user_ids.lookup([u])[0]))))}
            for u in users}
        popular = self.side.popular()
        out = []
        for x in model_inputs(self.model, users, self.side.recent, self.side.n_events,
                              seen, popular, self.sizes):
            out.append((x, features(x.user, x.cands, x.neighbours, self.metadata, popular)))
        return out

    def recommend(self, users: Sequence[str], k: int, exclude_seen: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(users), k), "", dtype=object)
        scores = np.full((len(users), k), -np.inf)
        for j, (user, (x, feats)) in enumerate(zip(users, self.inputs(users), strict=True)):
            base = retrieval_scores(x.cands)
            s = self.ranker.predict(feats) if self.ranker is not None else base
            top = np.argsort(-s, kind="stable")[:k]
            if self.ranker is not None:  # the shadow: what retrieval alone would serve
                shadow = np.argsort(-base, kind="stable")[:k]
                self._shadow[user] = ([x.cands.ids[t] for t in top],
                                      [x.cands.ids[t] for t in shadow])
            self._pending[user] = (x, feats)
            ids[j, : len(top)] = [x.cands.ids[t] for t in top]
            scores[j, : len(top)] = s[top]
        return ids.astype(str), scores

    def learn_many(self, batch: object, context: object = None) -> float:
        users = [str(u) for u in batch.users]  # type: ignore[attr-defined]
        items = [str(i) for i in batch.items]  # type: ignore[attr-defined]
        chosen: dict[str, set[str]] = {}
        for u, i in zip(users, items, strict=True):
            chosen.setdefault(u, set()).add(i)
        for u, picks in chosen.items():
            shadow = self._shadow.pop(u, None)
            if shadow is not None:
                self.while_ranked["events"] += 1
                self.while_ranked["ranker_hits"] += bool(picks & set(shadow[0]))
                self.while_ranked["retrieval_hits"] += bool(picks & set(shadow[1]))
            pending = self._pending.pop(u, None)
            if pending is not None:
                x, feats = pending
                self.examples.add(feats, np.array([c in picks for c in x.cands.ids]))
                self._since += 1
        loss = self.model.learn_many(batch, context)  # type: ignore[arg-type]
        self.side.observe(users, items, [int(t) for t in batch.ts_ms])  # type: ignore[attr-defined]
        if self._since >= self.retrain_every and len(self.examples) >= self.min_examples:
            ranker = self.examples.fit(self.params)
            if ranker.beats_retrieval():  # as the worker publishes
                self.ranker = ranker
            self.rankers.append(ranker.info)
            self._since = 0
        return loss


def replay_examples(ranked: RankedModel, events: object, batch: int = 16,
                    on_batch: object = None) -> int:
    """Stream ``events`` (an ``EventBatch`` in time order) through ``ranked`` in
    batches of ``batch``: before each batch the candidates of its users the model
    knows are computed (``recommend``), then the batch is learned, which labels them.
    Returns the examples kept. How the bootstrap builds the first ranker."""
    n = len(events)  # type: ignore[arg-type]
    for start in range(0, n, batch):
        part = events.take(slice(start, min(start + batch, n)))  # type: ignore[attr-defined]
        users = [u for u in dict.fromkeys(str(x) for x in part.users)
                 if ranked.model.knows_user(u)]
        if users:
            first = {str(u): int(t) for u, t in zip(part.users[::-1], part.ts_ms[::-1],
                                                     strict=True)}
            with ranked.model.asked_at({u: first[u] for u in users}):
                ranked.recommend(users, 10)
        ranked.learn_many(part)
        if callable(on_batch):
            on_batch(len(part))
    return ranked.examples.added
