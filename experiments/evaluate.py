"""Evaluation runs on MovieLens 100k: the splits of every protocol, models with the
per-protocol parameters, train-and-score.

Used by ``python -m scripts.evaluate`` (one JSON line per run), ``python -m scripts.tune``
(the grids) and the pinned regression test. Protocols are defined in
``models/evaluation.py``. A *validation* split applies the same protocol to data carved
from the part the test run *trains* on, never from what it scores: loo holds out each
user's second-to-last interaction (the latest is the test), full splits the 75% training
part 75/25 again (seed 43), prequential runs on the bootstrap part only (the first 20%
of the log: bootstrap on its first fifth, stream the rest); responsiveness bootstraps on
the first 80% of the log (its validation form: of the prequential validation log) and
measures the genre shift of issue 11 (``models.evaluation.responsiveness``). Results carry
``split_sha256``, a digest of the exact split, so runs can show they used the same one.

Model defaults (``models/gmf.py``, ``models/two_tower.py``, epochs in
``models/training.py``) are the ones chosen on the *full* validation split and also
serve prequential/streaming. ``loo`` uses :data:`PROTOCOL_PARAMS` on top: predicting
each user's single latest item rewards a less regularised model (chosen on the loo
validation split).
"""

from __future__ import annotations

import sys
import time
from functools import cached_property

from datasets.types import Dataset, Interactions
from models.base import Recommender
from models.evaluation import (
    FullSplit,
    LooSplit,
    digest,
    evaluate_full,
    evaluate_loo,
    full_digest,
    full_split,
    interactions_digest,
    loo_digest,
    loo_split,
    prequential,
    prequential_validation_log,
    responsiveness,
)
from models.events import EventBatch
from models.training import create_model, fit
from models.two_tower import TwoTower

#: Per-(model, protocol) overrides of the model defaults, each chosen on that protocol's
#: validation split (``--split validation``); see the module docstring.
PROTOCOL_PARAMS: dict[tuple[str, str], dict[str, object]] = {
    ("gmf", "loo"): {"l2": 0.02},
    ("two_tower", "loo"): {"l2": 0.02},
}

#: Share of the log the prequential protocol bootstraps on (the rest is scored).
PREQUENTIAL_BOOTSTRAP = 0.2

#: Share of the log the responsiveness protocol bootstraps on (the demo's 80%).
RESPONSIVENESS_BOOTSTRAP = 0.8


class Splits:
    """The test and validation splits of one log, each computed once (a tuning run
    evaluates many models on the same split)."""

    def __init__(self, inter: Interactions) -> None:
        self.inter = inter

    @cached_property
    def loo_test(self) -> LooSplit:
        return loo_split(self.inter)

    @cached_property
    def loo_validation(self) -> LooSplit:
        return loo_split(self.loo_test.train)

    @cached_property
    def full_test(self) -> FullSplit:
        return full_split(self.inter)

    @cached_property
    def full_validation(self) -> FullSplit:
        return full_split(self.full_test.train, seed=43)

    @cached_property
    def prequential_test(self) -> Interactions:
        return self.inter.sorted_by_time()

    @cached_property
    def prequential_validation(self) -> Interactions:
        return prequential_validation_log(self.inter, PREQUENTIAL_BOOTSTRAP)

    @cached_property
    def responsiveness_test(self) -> Interactions:
        ordered = self.inter.sorted_by_time()
        return ordered.take(slice(0, int(len(ordered) * RESPONSIVENESS_BOOTSTRAP)))

    @cached_property
    def responsiveness_validation(self) -> Interactions:
        """The first 80% of the prequential validation log (itself the first 20%)."""
        log = self.prequential_validation
        return log.take(slice(0, int(len(log) * RESPONSIVENESS_BOOTSTRAP)))


def new_model(kind: str, protocol: str, data: Dataset, dim: int | None = None,
              params: dict[str, object] | None = None) -> Recommender:
    """A fresh ``kind`` model with the defaults, the protocol's overrides and ``params``."""
    merged = {**PROTOCOL_PARAMS.get((kind, protocol), {}), **(params or {})}
    model = create_model(kind, dim=dim, **merged)
    if isinstance(model, TwoTower):  # item attributes arrive before clicks (cold start)
        for item in data.iter_items():
            model.upsert_item(item.item_id, item.attributes)
    return model


def train(model: Recommender, train: Interactions, epochs: int) -> None:
    t0 = time.perf_counter()
    losses = fit(model, EventBatch.from_interactions(train.sorted_by_time()), epochs=epochs)
    print(f"trained {model.kind} {epochs} epochs on {len(train)} events in "
          f"{time.perf_counter() - t0:.1f}s, last loss {losses[-1]:.4f}", file=sys.stderr)


def evaluate(model: Recommender, protocol: str, split: str, splits: Splits, epochs: int,
             limit: int | None = None, data: Dataset | None = None,
             clicks: int = 5, ranking: bool = False) -> dict[str, float | str]:
    """Train ``model`` on the chosen split's training part and score it; the metrics
    plus ``split_sha256`` (see :func:`models.evaluation.digest`). ``responsiveness``
    needs ``data`` (the item genres) and takes ``clicks``. ``ranking`` (prequential
    only, needs ``data``): the ranking stage on top, its ranker trained from the stream
    as the worker trains it (:class:`ranking.offline.RankedModel`)."""
    if ranking and protocol == "prequential":
        return _prequential_ranked(model, split, splits, epochs, limit, data)
    if protocol == "responsiveness":
        if data is None:
            raise ValueError("the responsiveness protocol needs the data set's items")
        boot = (splits.responsiveness_validation if split == "validation"
                else splits.responsiveness_test)
        train(model, boot, epochs)
        counts: dict[str, float] = {}
        for item in boot.items.tolist():
            counts[item] = counts.get(item, 0.0) + 1.0
        genres = {item.item_id: list(item.genres) for item in data.iter_items()}
        out = responsiveness(model, genres, counts, clicks=clicks,
                             ts_ms=int(boot.ts_ms.max()) + 1)
        return {**out, "split_sha256": digest(interactions_digest(boot),
                                              RESPONSIVENESS_BOOTSTRAP)}
    if protocol == "loo":
        lsplit = splits.loo_validation if split == "validation" else splits.loo_test
        train(model, lsplit.train, epochs)
        return {**evaluate_loo(model, lsplit), "split_sha256": loo_digest(lsplit)}
    if protocol == "full":
        fsplit = splits.full_validation if split == "validation" else splits.full_test
        train(model, fsplit.train, epochs)
        return {**evaluate_full(model, fsplit), "split_sha256": full_digest(fsplit)}
    log = splits.prequential_validation if split == "validation" else splits.prequential_test
    out = prequential(model, log, lambda m, ev: fit(m, ev, epochs=epochs),
                      bootstrap_fraction=PREQUENTIAL_BOOTSTRAP, limit=limit)
    print(f"prequential: {int(out['evaluated'])} events evaluated", file=sys.stderr)
    return {"recall@10": out["recall@10"], "learn_events_per_s": out["learn_events_per_s"],
            "split_sha256": digest(interactions_digest(log), PREQUENTIAL_BOOTSTRAP, limit)}


def _prequential_ranked(model: Recommender, split: str, splits: Splits, epochs: int,
                        limit: int | None, data: Dataset | None) -> dict[str, float | str]:
    from ranking.offline import RankedModel

    if data is None:
        raise ValueError("the ranking stage needs the data set's items (their attributes)")
    log = splits.prequential_validation if split == "validation" else splits.prequential_test
    ranked = RankedModel(model, {i.item_id: i.attributes for i in data.iter_items()})

    def boot(m: RankedModel, events: EventBatch) -> None:
        fit(m.model, events, epochs=epochs)
        m.side.observe([str(u) for u in events.users], [str(i) for i in events.items],
                       events.ts_ms.tolist())

    out = prequential(ranked, log, boot,  # type: ignore[arg-type]  # a model-like wrapper
                      bootstrap_fraction=PREQUENTIAL_BOOTSTRAP, limit=limit)
    print(f"prequential: {int(out['evaluated'])} events evaluated", file=sys.stderr)
    w = ranked.while_ranked
    return {"recall@10": out["recall@10"], "learn_events_per_s": out["learn_events_per_s"],
            "rankers_trained": float(len(ranked.rankers)),
            "ranked_events": float(w["events"]),
            "ranked_recall@10": w["ranker_hits"] / max(w["events"], 1),
            "retrieval_recall@10_same_events": w["retrieval_hits"] / max(w["events"], 1),
            "split_sha256": digest(interactions_digest(log), PREQUENTIAL_BOOTSTRAP, limit)}


def rounded(metrics: dict[str, float | str]) -> dict[str, float | str]:
    """Metrics to 4 decimals (throughput to 1), as printed and committed."""
    whole = ("users", "clicks", "rankers_trained", "ranked_events")
    return {k: v if isinstance(v, str) else int(v) if k in whole else
            round(v, 1 if k == "learn_events_per_s" else 4) for k, v in metrics.items()}
