"""The learned ranker: a LightGBM model over :data:`ranking.features.FEATURES`.

Why LightGBM and a binary objective: on the stream's own task (the item a user chose
next among the candidates computable at that moment, MovieLens replayed), gradient
boosted trees over these few dozen mixed-scale features beat retrieval alone, and the
binary objective with sampled negatives beat LambdaRank on the held-out slice
(``python -m scripts.tune_ranker`` prints the comparison; its output is committed in
``ops/tuning/ranker.json``). Trees need no feature scaling and read NaN as "unknown",
which is what a source that did not propose an item gives. Size: every configuration
the tuning tried scored within 0.003 recall@10 of the best (the seed spread of the
hybrid's own tuning) but LambdaRank and the 200-tree ranker over 150 candidates, so the
defaults are the cheapest to serve of those (the script's rule): 100 trees of 15 leaves
over ~150 candidates (LightGBM costs ~2 µs a candidate per 200 trees; it was a third
of the API's CPU with 200 trees over 250 candidates).

A ranker travels as text (:meth:`Ranker.to_text`): a JSON envelope with its version, the
feature names it was trained on and LightGBM's own model text. No pickle: loading
checks the feature list against this code's and raises :class:`RankerError` otherwise.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np

from common.errors import RecsysError
from ranking.features import FEATURES

FORMAT = 1


class RankerError(RecsysError):
    """A ranker's text does not load (damaged, another format or feature list)."""


@dataclass(frozen=True)
class RankerParams:
    """How a ranker is trained (chosen on validation data: ``scripts.tune_ranker``)."""

    objective: str = "binary"
    num_leaves: int = 15
    learning_rate: float = 0.1
    rounds: int = 100
    min_data_in_leaf: int = 100
    #: Negatives kept per example (a random sample of the other candidates; 0: all).
    negatives: int = 30
    seed: int = 0


def new_ranker_version() -> str:
    """Sortable, unique enough: UTC time to the millisecond."""
    return "r" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3] + "Z"


@dataclass
class Ranker:
    """A trained model and where it came from."""

    booster: lgb.Booster
    version: str
    info: dict[str, object] = field(default_factory=dict)

    def beats_retrieval(self) -> bool:
        """Whether it ranked its held-out examples better than retrieval alone, beyond
        chance (:data:`PUBLISH_P`). A ranker that does not is never published: serving
        keeps the ranker in use, or the retrieval order."""
        h = self.info.get("held_out")
        return isinstance(h, dict) and h.get("examples", 0) > 0 and \
            h["ranker_recall"] > h["retrieval_recall"] and \
            h.get("p_value", 1.0) < PUBLISH_P

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores (higher is better) of the rows of a :func:`ranking.features.features`
        matrix, on the calling thread only."""
        if len(x) == 0:
            return np.zeros(0)
        return np.asarray(self.booster.predict(x, num_threads=1, raw_score=True))

    def to_text(self) -> str:
        return json.dumps({"format": FORMAT, "version": self.version,
                           "features": list(FEATURES), "info": self.info,
                           "model": self.booster.model_to_string()})

    @classmethod
    def from_text(cls, text: str | bytes) -> Ranker:
        """The ranker :meth:`to_text` wrote; :class:`RankerError` if it cannot serve."""
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise RankerError(f"ranker format {doc.get('format')!r}, expected {FORMAT}")
            if doc.get("features") != list(FEATURES):
                raise RankerError("ranker was trained on other features: "
                                  f"{doc.get('features')} (this code: {list(FEATURES)})")
            booster = lgb.Booster(model_str=doc["model"])
            return cls(booster, str(doc["version"]), dict(doc.get("info") or {}))
        except RankerError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, lgb.basic.LightGBMError) as exc:
            raise RankerError(f"ranker text does not load: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from exc


class Examples:
    """A bounded window of labelled candidate lists, newest kept.

    Each example is one moment of one user: the feature rows of the candidates and which
    of them the user chose next (at least one, else it teaches nothing and is dropped).
    Negatives are sampled on the way in, so the window's memory is bounded by
    ``capacity × (positives + negatives)`` rows. The newest ``full`` examples are also
    kept whole: the held-out check ranks every candidate, as serving does.
    """

    def __init__(self, capacity: int = 20_000, negatives: int = RankerParams.negatives,
                 seed: int = 0, full: int = 2000) -> None:
        self.groups: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=capacity)
        self.full: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=full)
        self.negatives = negatives
        self.rng = np.random.default_rng(seed)
        self.offered = 0  # examples offered, kept or not
        self.added = 0  # examples kept

    def add(self, x: np.ndarray, chosen: np.ndarray) -> bool:
        """Keep one example (``chosen``: boolean per row); False if nothing was chosen."""
        self.offered += 1
        pos = np.flatnonzero(chosen)
        if len(pos) == 0:
            return False
        neg = np.flatnonzero(~chosen)
        if self.negatives and len(neg) > self.negatives:
            neg = self.rng.choice(neg, self.negatives, replace=False)
        rows = np.concatenate([pos, neg])
        self.groups.append((x[rows], chosen[rows].astype(np.float32)))
        self.full.append((x, chosen.astype(np.float32)))
        self.added += 1
        return True

    def __len__(self) -> int:
        return len(self.groups)

    def fit(self, params: RankerParams = RankerParams(), version: str | None = None,
            held_out: float = 0.2) -> Ranker:
        """A ranker trained on the window but its newest ``held_out`` share (at most the
        examples kept whole), on which it is compared with the retrieval order over every
        candidate (``info["held_out"]``: recall@10 of each; :meth:`Ranker.beats_retrieval`).
        Raises ``ValueError`` when the window is empty."""
        if not self.groups:
            raise ValueError("no examples to train a ranker on")
        groups = list(self.groups)
        n_test = min(int(len(groups) * held_out), len(self.full), len(groups) - 1)
        train = groups[: len(groups) - n_test]
        test = list(self.full)[len(self.full) - n_test:] if n_test else []
        ranker = train_ranker(np.vstack([g[0] for g in train]),
                              np.concatenate([g[1] for g in train]),
                              [len(g[1]) for g in train], params, version)
        ranker.info["held_out"] = held_out_recall(ranker, test)
        return ranker


#: A ranker is published only if it beats retrieval on its held-out examples with a
#: one-sided exact binomial (McNemar) test on the examples where exactly one of the two
#: put a chosen item in its top 10, at this level.
PUBLISH_P = 0.05


def held_out_recall(ranker: Ranker, groups: list[tuple[np.ndarray, np.ndarray]],
                    k: int = 10) -> dict[str, float]:
    """Recall@``k`` of the ranker and of the retrieval order (the ``ann`` score) over
    labelled ``groups`` it was not trained on, and the paired test of the difference:
    ``only_ranker`` / ``only_retrieval`` count the examples only one of them hit, and
    ``p_value`` is scipy's exact binomial test of ``only_ranker`` among the two (one
    sided: the ranker hits more often)."""
    from scipy.stats import binomtest

    col = FEATURES.index("ann_score")
    recall = {"ranker": 0.0, "retrieval": 0.0}
    only = {"ranker": 0, "retrieval": 0}
    for x, y in groups:
        hit = {}
        for name, score in (("ranker", ranker.predict(x)),
                            ("retrieval", np.nan_to_num(x[:, col], nan=-1e12))):
            top = np.argsort(-score, kind="stable")[:k]
            recall[name] += float(y[top].sum() / max(y.sum(), 1.0))
            hit[name] = bool(y[top].any())
        if hit["ranker"] != hit["retrieval"]:
            only["ranker" if hit["ranker"] else "retrieval"] += 1
    n = max(len(groups), 1)
    discordant = only["ranker"] + only["retrieval"]
    p = (binomtest(only["ranker"], discordant, 0.5, alternative="greater").pvalue
         if discordant else 1.0)
    return {"examples": float(len(groups)), "ranker_recall": recall["ranker"] / n,
            "retrieval_recall": recall["retrieval"] / n,
            "only_ranker": float(only["ranker"]), "only_retrieval": float(only["retrieval"]),
            "p_value": float(p)}


def train_ranker(x: np.ndarray, y: np.ndarray, group_sizes: list[int],
                 params: RankerParams = RankerParams(), version: str | None = None,
                 threads: int = 1) -> Ranker:
    """Fit LightGBM on rows ``x`` with 0/1 labels ``y`` in consecutive groups."""
    booster = lgb.train(
        {"objective": params.objective, "num_leaves": params.num_leaves,
         "learning_rate": params.learning_rate, "min_data_in_leaf": params.min_data_in_leaf,
         "seed": params.seed, "deterministic": True, "num_threads": threads,
         "verbose": -1},
        lgb.Dataset(x, y, group=group_sizes if params.objective != "binary" else None,
                    feature_name=list(FEATURES), free_raw_data=True),
        num_boost_round=params.rounds)
    info: dict[str, object] = {"examples": len(group_sizes), "rows": int(len(y)),
                               "params": asdict(params),
                               "trained_at": datetime.now(UTC).isoformat()}
    return Ranker(booster, version or new_ranker_version(), info)
