"""Evaluate a model on MovieLens 100k under one protocol; print ONE JSON line.

    python -m scripts.evaluate --protocol loo|full|prequential|responsiveness
                               [--model gmf|two_tower|popularity|cooc] [--clicks 5]

Protocols are defined in ``models/evaluation.py``, the splits and runs in
:mod:`experiments.evaluate`; without ``--model`` the product
default (``models.training.PRODUCT_MODEL``) is evaluated. ``responsiveness`` bootstraps
on the first 80% of the log (time order) and measures the genre shift of issue 11
(``models.evaluation.responsiveness``). ``--split validation`` applies the
same protocol to data carved from the part the test run *trains* on, never from what it
scores: loo holds out each user's second-to-last interaction (the latest is the test),
full splits the 75% training part 75/25 again (seed 43), prequential runs on the
bootstrap part only (the first 20% of the log: bootstrap on its first fifth, stream the
rest). ``scripts/tune.py`` runs the grids that chose the hyperparameters on these
splits; its output is committed in ``ops/tuning/``. The JSON line carries
``split_sha256``, a digest of the exact split, so runs can show they used the same one.
Progress goes to stderr so stdout stays one JSON line.

Model defaults (``models/gmf.py``, ``models/two_tower.py``, epochs in
``models/training.py``) are the ones chosen on the *full* validation split and also
serve prequential/streaming. ``loo`` uses :data:`PROTOCOL_PARAMS` on top: predicting
each user's single latest item rewards a less regularised model (chosen on the loo
validation split). ``--params`` overrides both.
"""

from __future__ import annotations

import argparse
import json

import torch

from common.settings import Settings
from datasets import movielens
from experiments.evaluate import Splits, evaluate, new_model, rounded
from models.training import DEFAULT_EPOCHS, PRODUCT_MODEL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=["loo", "full", "prequential", "responsiveness"],
                   required=True)
    p.add_argument("--model", choices=list(DEFAULT_EPOCHS),
                   default=PRODUCT_MODEL,
                   help=f"default: the product default model ({PRODUCT_MODEL})")
    p.add_argument("--clicks", type=int, default=5,
                   help="responsiveness: clicks per user in the new genre")
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument("--epochs", type=int, default=None, help="default: per-model tuned value")
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--params", default="{}", help="JSON of extra model hyperparameters")
    p.add_argument("--limit", type=int, default=None, help="prequential: stream at most N")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--ranking", choices=["on", "off"], default=None,
                   help="prequential: the ranking stage on top, its ranker trained from "
                        "the stream as the worker does (default: on for the product "
                        "default model, off otherwise; the other protocols have no "
                        "stream to train a ranker from and evaluate retrieval)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    data = movielens.load(Settings.from_env().cache_dir)
    epochs = DEFAULT_EPOCHS[args.model] if args.epochs is None else args.epochs
    model = new_model(args.model, args.protocol, data, args.dim, json.loads(args.params))
    ranking = args.protocol == "prequential" and (
        args.ranking == "on" or (args.ranking is None and args.model == PRODUCT_MODEL))
    metrics = evaluate(model, args.protocol, args.split, Splits(data.interactions), epochs,
                       args.limit, data, args.clicks, ranking=ranking)
    return {"model": args.model, "protocol": args.protocol, "split": args.split,
            "ranking": ranking, **rounded(metrics)}


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv))))


if __name__ == "__main__":
    main()
