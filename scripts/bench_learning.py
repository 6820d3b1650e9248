"""In-process learning throughput of a model on one core, and the cost of one growth step.

    python -m scripts.bench_learning [--model gmf|two_tower|session|hybrid|cooc]
                                     [--users 1000000 --items 200000 --seconds 4]
                                     [--params '{"negatives": 64}']

Registers 1M users × 200k items (tables sized exactly to that, as after a bulk load),
then times ``learn_many`` on synthetic micro-batches of 1, 64 and 256 events with the
model's configured negatives (``--model`` defaults, GMF unless said, unless
``--params``), each for about
``--seconds`` of wall time cut into 5 windows (the median window's events per second,
the range, and events per CPU second); finally times
one growth step that adds 10% more users (1M → 1.1M) and reports the process's peak
RSS. Prints readable figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from datasets.synthetic import SyntheticConfig, SyntheticGenerator
from models.base import Recommender
from models.events import EventBatch
from models.training import create_model


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def throughput(model: Recommender, events: EventBatch, batch_size: int, seconds: float,
               windows: int = 5) -> dict[str, float]:
    """Events/s of ``learn_many`` over consecutive batches for about ``seconds``.

    The time is cut into ``windows`` equal windows and the median window is reported
    (with the slowest and fastest): on a shared virtual machine the speed of the same
    code drifts by up to 1.5× within a minute, and one number from one window says as
    much about the neighbours as about the code. ``cpu`` is events per CPU second of
    this process over the whole run (it excludes time spent waiting for a core).
    """
    model.learn_many(events.take(slice(0, batch_size)))  # warm-up
    pos, rates = batch_size, []
    cpu_start, cpu_done = time.process_time(), 0
    for _ in range(windows):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            if pos + batch_size > len(events):
                pos = 0
            model.learn_many(events.take(slice(pos, pos + batch_size)))
            pos += batch_size
            done += batch_size
        rates.append(done / (time.perf_counter() - start))
        cpu_done += done
    cpu = time.process_time() - cpu_start
    return {"median": float(np.median(rates)), "min": min(rates), "max": max(rates),
            "cpu": cpu_done / max(cpu, 1e-9)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--model", default="gmf",
                   choices=["gmf", "two_tower", "session", "hybrid", "cooc"])
    p.add_argument("--params", default="{}",
                   help="JSON of model hyperparameters to override (e.g. negatives)")
    p.add_argument("--track-seen", action="store_true",
                   help="keep the unbounded per-user seen sets (offline evaluation mode)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    gen = SyntheticGenerator(SyntheticConfig(n_users=args.users, n_items=args.items, seed=0))
    events = EventBatch.from_interactions(gen.interactions(args.events))
    params = json.loads(args.params)
    if args.model != "cooc":
        params["dim"] = args.dim
    model = create_model(args.model, **params)
    if not args.track_seen:
        model.stop_tracking_seen()  # as the streaming worker runs it (streams/app.py)
    model.register(users=[f"u{j}" for j in range(args.users)],
                   items=[f"i{j}" for j in range(args.items)])
    print(f"setup: {args.model}, {args.users:,} users x {args.items:,} items, dim "
          f"{model.dim}, {model.get_params().get('negatives', '-')} negatives, "
          f"{time.perf_counter() - t0:.1f}s")

    result: dict[str, float | str | list[int]] = {"model": args.model}
    for bs in (1, 64, 256):
        rate = throughput(model, events, bs, args.seconds / (2 if bs == 1 else 1))
        result[f"events_per_s_batch{bs}"] = round(rate["median"], 1)
        result[f"events_per_s_batch{bs}_min"] = round(rate["min"], 1)
        result[f"events_per_s_batch{bs}_max"] = round(rate["max"], 1)
        result[f"events_per_cpu_s_batch{bs}"] = round(rate["cpu"], 1)
        print(f"learn_many batch {bs:>3}: {rate['median']:>12,.0f} events/s median of 5 "
              f"windows (range {rate['min']:,.0f}-{rate['max']:,.0f}; "
              f"{rate['cpu']:,.0f} per CPU second)")

    n_new = args.users // 10
    new_users = np.char.add("new", np.arange(n_new).astype(str)).tolist()
    cap_before = len(model.history.count)  # every model has the history ring
    t1 = time.perf_counter()
    model.register(users=new_users)  # ids, embedding rows, optimiser state, histories
    growth_s = time.perf_counter() - t1
    print(f"growth {len(model.user_ids) - n_new:,} -> {len(model.user_ids):,} users "
          f"(capacity {cap_before:,} -> {len(model.history.count):,}): {growth_s:.2f}s")
    t2 = time.perf_counter()
    model.learn_many(EventBatch.of(new_users[:256], events.items[:256].tolist()))
    print(f"first batch of the new users learnt in {time.perf_counter() - t2:.4f}s")
    result["growth_s"] = round(growth_s, 3)
    # what the growth step did, so a reader (and the test) can see the tables really grew
    result["growth_users"] = [len(model.user_ids) - n_new, len(model.user_ids)]
    result["growth_capacity"] = [cap_before, len(model.history.count)]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(f"peak RSS {result['peak_rss_mb']:,.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
