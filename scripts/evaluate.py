"""Evaluate a model on MovieLens 100k under one protocol; print ONE JSON line.

    python -m scripts.evaluate --protocol loo|full|prequential --model gmf|two_tower|popularity

Protocols are defined in ``models/evaluation.py``. ``--split validation`` applies the
same protocol to the *training* part of the test split (loo: each user's second-to-last
interaction; full: a 75/25 split of the 75% training part, seed 43; prequential: the
first 50% of the log), which is what hyperparameters were tuned on. Progress goes to
stderr so stdout stays one JSON line.

Model defaults (``models/gmf.py``, ``models/two_tower.py``, epochs in
``models/training.py``) are the ones chosen on the *full* validation split and also
serve prequential/streaming. ``loo`` uses :data:`PROTOCOL_PARAMS` on top: predicting
each user's single latest item rewards a less regularised model (chosen on the loo
validation split). ``--params`` overrides both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from common.settings import Settings
from datasets import movielens
from datasets.types import Dataset, Interactions
from models.base import Recommender
from models.evaluation import (
    evaluate_full,
    evaluate_loo,
    full_split,
    loo_split,
    prequential,
)
from models.events import EventBatch
from models.training import DEFAULT_EPOCHS, create_model, fit

#: Per-(model, protocol) overrides of the model defaults, each chosen on that protocol's
#: validation split (``--split validation``); see the module docstring.
PROTOCOL_PARAMS: dict[tuple[str, str], dict[str, object]] = {
    ("gmf", "loo"): {"l2": 0.02},
    ("two_tower", "loo"): {"l2": 0.02},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=["loo", "full", "prequential"], required=True)
    p.add_argument("--model", choices=["gmf", "two_tower", "popularity"], default="gmf")
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument("--epochs", type=int, default=None, help="default: per-model tuned value")
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--params", default="{}", help="JSON of extra model hyperparameters")
    p.add_argument("--limit", type=int, default=None, help="prequential: stream at most N")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args(argv)


def new_model(args: argparse.Namespace, data: Dataset) -> Recommender:
    params = {**PROTOCOL_PARAMS.get((args.model, args.protocol), {}), **json.loads(args.params)}
    model = create_model(args.model, dim=args.dim, **params)
    if args.model == "two_tower":  # item attributes arrive before clicks (cold start)
        for item in data.iter_items():
            model.upsert_item(item.item_id, item.attributes)
    return model


def train(model: Recommender, train: Interactions, epochs: int) -> None:
    t0 = time.perf_counter()
    losses = fit(model, EventBatch.from_interactions(train.sorted_by_time()), epochs=epochs)
    print(f"trained {model.kind} {epochs} epochs on {len(train)} events in "
          f"{time.perf_counter() - t0:.1f}s, last loss {losses[-1]:.4f}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    data = movielens.load(Settings.from_env().cache_dir)
    inter = data.interactions
    epochs = DEFAULT_EPOCHS[args.model] if args.epochs is None else args.epochs
    model = new_model(args, data)
    metrics: dict[str, float]
    if args.protocol == "loo":
        split = loo_split(inter)
        if args.split == "validation":
            split = loo_split(split.train)
        train(model, split.train, epochs)
        metrics = evaluate_loo(model, split)
    elif args.protocol == "full":
        fsplit = full_split(inter)
        if args.split == "validation":
            fsplit = full_split(fsplit.train, seed=43)
        train(model, fsplit.train, epochs)
        metrics = evaluate_full(model, fsplit)
    else:
        log = inter.sorted_by_time()
        if args.split == "validation":
            log = log.take(slice(0, len(log) // 2))
        out = prequential(model, log, lambda m, ev: fit(m, ev, epochs=epochs),
                          limit=args.limit)
        print(f"prequential: {int(out['evaluated'])} events evaluated", file=sys.stderr)
        metrics = {"recall@10": out["recall@10"],
                   "learn_events_per_s": out["learn_events_per_s"]}
    return {"model": args.model, "protocol": args.protocol,
            **{k: round(v, 4) if k != "learn_events_per_s" else round(v, 1)
               for k, v in metrics.items()}}


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv))))


if __name__ == "__main__":
    main()
