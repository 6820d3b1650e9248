"""Train the first model from history; write a checkpoint and exported vectors.

    python -m scripts.bootstrap [--model session|two_tower|gmf] [--epochs N] [--dim D]
                                [--interactions FILE] [--until-fraction 0.8] [--out DIR]

Data: MovieLens 100k (default) or an interactions CSV/TSV with a header naming
``user_id``, ``item_id`` and optionally ``event``, ``value``/``rating``, ``ts``/``ts_ms``
(epoch ms). ``--until-fraction f`` keeps the first ``f`` of the events in time order
(the end-to-end demo bootstraps on 80% and replays the rest as a live stream).

Writes ``<out>/checkpoints/<version>/`` (see ``models.checkpoint``) and
``<out>/export/<version>/{item_vectors.npy,item_ids.json,user_vectors.npy,user_ids.json}``
(float32, row ``j`` ↔ id ``j``), then prints a one-line summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.settings import Settings
from datasets import movielens
from datasets.types import Interactions, Item
from models import kernels
from models.checkpoint import save_checkpoint
from models.events import EventBatch
from models.training import DEFAULT_EPOCHS, PRODUCT_MODEL, SERVED_MODELS, create_model, fit
from models.two_tower import TwoTower
from ranking.offline import RankedModel, replay_examples
from ranking.ranker import Ranker
from streams.ranker_training import save_ranker


def read_interactions(path: Path) -> Interactions:
    """Columns of a delimited file with a header (see module docstring)."""
    with path.open(newline="", encoding="utf-8") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;")
        rows = list(csv.DictReader(fh, dialect=dialect))
    if not rows:
        raise SystemExit(f"{path}: no rows")

    def col(*names: str) -> str | None:
        return next((n for n in names if n in rows[0]), None)

    user, item = col("user_id", "user"), col("item_id", "item")
    if user is None or item is None:
        raise SystemExit(f"{path}: header needs user_id and item_id, got {list(rows[0])}")
    value, ts, event = col("value", "rating"), col("ts", "ts_ms", "timestamp"), col("event")
    return Interactions(
        users=np.array([r[user] for r in rows]),
        items=np.array([r[item] for r in rows]),
        ratings=np.array([float(r[value] or 1) if value else 1.0 for r in rows], np.float32),
        ts_ms=np.array([int(float(r[ts])) if ts else j for j, r in enumerate(rows)], np.int64),
        events=np.array([r[event] for r in rows]) if event else None,
    )


def export(model: object, folder: Path) -> None:
    """Item and user retrieval vectors as .npy + ids as JSON (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    item_ids, item_vecs = model.item_vectors()  # type: ignore[attr-defined]
    user_ids = list(model.user_ids.ids)  # type: ignore[attr-defined]
    user_vecs = (model.user_vectors(user_ids) if user_ids  # type: ignore[attr-defined]
                 else np.zeros((0, model.vector_dim), np.float32))  # type: ignore[attr-defined]
    np.save(folder / "item_vectors.npy", item_vecs, allow_pickle=False)
    np.save(folder / "user_vectors.npy", user_vecs, allow_pickle=False)
    (folder / "item_ids.json").write_text(json.dumps(item_ids))
    (folder / "user_ids.json").write_text(json.dumps(user_ids))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=SERVED_MODELS, default=PRODUCT_MODEL)
    p.add_argument("--epochs", type=int, default=None, help="default: tuned per model")
    p.add_argument("--dim", type=int, default=None, help="default: the model's")
    p.add_argument("--interactions", type=Path, default=None,
                   help="CSV/TSV of interactions (default: MovieLens 100k)")
    p.add_argument("--until-fraction", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=None, help="default: RECSYS_MODEL_DIR")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ranker-events", type=int, default=20_000,
                   help="train the first ranker on the last N events, at most half (0: none)")
    args = p.parse_args(argv)
    if not 0.0 < args.until_fraction <= 1.0:
        p.error("--until-fraction must be in (0, 1]")
    torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    out = args.out or settings.model_dir

    items: dict[str, Item] = {}
    if args.interactions is None:
        data = movielens.load(settings.cache_dir)
        inter, items, source = data.interactions, data.items, "movielens-100k"
    else:
        inter, source = read_interactions(args.interactions), str(args.interactions)
    inter = inter.sorted_by_time()
    inter = inter.take(slice(0, int(round(len(inter) * args.until_fraction))))
    events = EventBatch.from_interactions(inter)

    model = create_model(args.model, dim=args.dim)
    if isinstance(model, TwoTower):  # two_tower and session: attributes before clicks
        for item in items.values():
            model.upsert_item(item.item_id, item.attributes)
    epochs = DEFAULT_EPOCHS[args.model] if args.epochs is None else args.epochs
    # compile the learning kernels before the clock starts (~10 s once per checkout)
    print(f"learning kernels ready in {kernels.warm_up():.1f}s", file=sys.stderr)
    t0 = time.perf_counter()
    with tqdm(total=epochs * len(events), unit="ev", desc=f"{args.model}") as bar:
        def on_batch(n: int, loss: float) -> None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}",
                            ev_s=f"{bar.n / max(time.perf_counter() - t0, 1e-9):,.0f}",
                            refresh=False)

        losses = fit(model, events, epochs=epochs, batch_size=args.batch_size,
                     on_batch=on_batch)
    seconds = time.perf_counter() - t0
    version = save_checkpoint(model, out / "checkpoints", extra={
        "source": source, "until_fraction": args.until_fraction, "epochs": epochs})
    export(model, out / "export" / version)
    ranker = (first_ranker(args.model, args.dim, events, items, epochs, args.ranker_events,
                           out / "rankers") if args.ranker_events > 0 else None)
    if ranker is None:  # a ranker saved for an earlier model must not serve this one
        (out / "rankers" / "latest").unlink(missing_ok=True)
    print(json.dumps({
        "version": version, "model": args.model, "source": source, "events": len(events),
        "users": len(model.user_ids), "items": len(model.item_ids), "dim": model.vector_dim,
        "epochs": epochs, "final_loss": round(losses[-1], 4), "seconds": round(seconds, 1),
        "events_per_s": round(epochs * len(events) / max(seconds, 1e-9)),
        "checkpoint": str(out / "checkpoints" / version),
        "export": str(out / "export" / version),
        "ranker": ranker.version if ranker else None,
        "ranker_examples": ranker.info.get("examples") if ranker else 0}))


def first_ranker(kind: str, dim: int | None, events: EventBatch, items: dict[str, Item],
                 epochs: int, tail: int, folder: Path) -> Ranker | None:
    """The first ranker: a copy of the model trained on all but the last ``tail``
    events (at most half of them), which are then streamed as the worker would
    (candidates before each batch labelled by what the users chose:
    :func:`ranking.offline.replay_examples`). The served model itself stays the one
    trained on everything. A ranker no better than retrieval on its held-out examples
    is not saved."""
    n_head = max(len(events) - min(tail, len(events) // 2), 0)
    if n_head == 0 or n_head == len(events):
        print("ranker: not enough events for a head and a tail", file=sys.stderr)
        return None
    model = create_model(kind, dim=dim)
    if isinstance(model, TwoTower):
        for item in items.values():
            model.upsert_item(item.item_id, item.attributes)
    head = events.take(slice(0, n_head))
    fit(model, head, epochs=epochs)
    ranked = RankedModel(model, {i: it.attributes for i, it in items.items()},
                         retrain_every=10**12)
    ranked.side.observe([str(u) for u in head.users], [str(i) for i in head.items],
                        head.ts_ms.tolist())
    rest = events.take(slice(n_head, None))
    with tqdm(total=len(rest), unit="ev", desc="ranker examples") as bar:
        kept = replay_examples(ranked, rest, on_batch=bar.update)
    if kept == 0:
        print("ranker: no examples (no user of the tail was known)", file=sys.stderr)
        return None
    ranker = ranked.examples.fit()
    print(f"ranker {ranker.version}: held-out {ranker.info.get('held_out')}", file=sys.stderr)
    if not ranker.beats_retrieval():
        print("ranker: no better than retrieval on its held-out examples: not saved "
              "(the API serves the retrieval order until the worker trains a better one)",
              file=sys.stderr)
        return None
    save_ranker(folder, ranker)
    return ranker


if __name__ == "__main__":
    main()
