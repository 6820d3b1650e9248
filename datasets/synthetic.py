"""Synthetic click streams for scale work: power-law popularity, taste clusters, drift.

The generator is deterministic for a seed and streaming: it holds O(users + items)
state and yields the log in chunks, so a 100M-event stream needs no more memory than a
100-event one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from common.events import EVENT_TYPES as WIRE_EVENT_TYPES
from datasets.types import Interactions, Item

#: Implicit-feedback types of the wire schema (a rating is explicit: not generated).
EVENT_TYPES = np.array([t for t in WIRE_EVENT_TYPES if t != "rating"])
EVENT_PROBS = np.array([0.55, 0.30, 0.10, 0.05])


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the synthetic world.

    ``zipf_alpha`` sets how heavy the popularity tail is (1.0 ≈ classic Zipf);
    ``taste`` is the chance that an event comes from the user's current cluster rather
    than from global popularity; ``drift`` is the fraction of users who switch cluster
    per 100k events.
    """

    n_users: int = 10_000
    n_items: int = 5_000
    n_clusters: int = 20
    zipf_alpha: float = 1.0
    user_alpha: float = 0.8
    taste: float = 0.8
    drift: float = 0.0
    seed: int = 0
    start_ms: int = 1_700_000_000_000
    mean_gap_ms: float = 10.0


class SyntheticGenerator:
    """Generates interaction logs (and item catalogues) for a :class:`SyntheticConfig`.

    >>> g = SyntheticGenerator(SyntheticConfig(n_users=50, n_items=40, seed=1))
    >>> a = g.interactions(1000); b = SyntheticGenerator(g.config).interactions(1000)
    >>> bool((a.items == b.items).all())
    True
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = c = config
        rng = np.random.default_rng(c.seed)
        # Item popularity: Zipf over a random permutation so ids carry no rank signal.
        ranks = rng.permutation(c.n_items) + 1
        self.item_pop = 1.0 / ranks.astype(np.float64) ** c.zipf_alpha
        self.item_cluster = rng.integers(0, c.n_clusters, c.n_items)
        user_ranks = rng.permutation(c.n_users) + 1
        activity = 1.0 / user_ranks.astype(np.float64) ** c.user_alpha
        self._user_cdf = np.cumsum(activity / activity.sum())
        self.user_cluster0 = rng.integers(0, c.n_clusters, c.n_users)
        self._global_cdf = np.cumsum(self.item_pop / self.item_pop.sum())
        self._cluster_items: list[np.ndarray] = []
        self._cluster_cdf: list[np.ndarray] = []
        for k in range(c.n_clusters):
            members = np.flatnonzero(self.item_cluster == k)
            if len(members) == 0:  # tiny catalogues: fall back to all items
                members = np.arange(c.n_items)
            w = self.item_pop[members]
            self._cluster_items.append(members)
            self._cluster_cdf.append(np.cumsum(w / w.sum()))

    def items(self) -> dict[str, Item]:
        """The catalogue: one item per id with its cluster as a category attribute."""
        return {
            f"i{j}": Item(item_id=f"i{j}", title=f"Item {j}", year=None,
                          genres=(f"c{self.item_cluster[j]}",))
            for j in range(self.config.n_items)
        }

    BLOCK = 8_192  # random draws happen per block, so output does not depend on chunk size

    def iter_chunks(self, n_events: int, chunk_size: int = 100_000) -> Iterator[Interactions]:
        """Yield ``n_events`` events in time order, ``chunk_size`` at a time."""
        buffer: list[Interactions] = []
        buffered = 0
        emitted = 0
        for block in self._blocks(n_events):
            buffer.append(block)
            buffered += len(block)
            while buffered >= chunk_size or (buffered and emitted + buffered == n_events):
                joined = _concat(buffer)
                take = min(chunk_size, buffered)
                yield joined.take(slice(0, take))
                rest = joined.take(slice(take, None))
                buffer, buffered = ([rest], len(rest)) if len(rest) else ([], 0)
                emitted += take

    def _blocks(self, n_events: int) -> Iterator[Interactions]:
        c = self.config
        rng = np.random.default_rng([c.seed, 1])
        user_cluster = self.user_cluster0.copy()
        t = float(c.start_ms)
        done = 0
        while done < n_events:
            n = min(self.BLOCK, n_events - done)
            if c.drift > 0:
                movers = rng.random(c.n_users) < c.drift * self.BLOCK / 100_000
                user_cluster[movers] = rng.integers(0, c.n_clusters, int(movers.sum()))
            users = np.minimum(np.searchsorted(self._user_cdf, rng.random(n)), c.n_users - 1)
            items = np.minimum(np.searchsorted(self._global_cdf, rng.random(n)), c.n_items - 1)
            tasteful = rng.random(n) < c.taste
            clusters = user_cluster[users]
            for k in np.unique(clusters[tasteful]):
                rows = np.flatnonzero(tasteful & (clusters == k))
                cdf = self._cluster_cdf[k]
                pick = np.minimum(np.searchsorted(cdf, rng.random(len(rows))), len(cdf) - 1)
                items[rows] = self._cluster_items[k][pick]
            gaps = rng.exponential(c.mean_gap_ms, n)
            ts = (t + np.cumsum(gaps)).astype(np.int64)
            t = float(ts[-1])
            events = EVENT_TYPES[np.searchsorted(np.cumsum(EVENT_PROBS), rng.random(n) * 0.999999)]
            yield Interactions(
                users=np.char.add("u", users.astype(str)),
                items=np.char.add("i", items.astype(str)),
                ratings=np.ones(n, dtype=np.float32),
                ts_ms=ts,
                events=events,
            )
            done += n

    def interactions(self, n_events: int) -> Interactions:
        """All ``n_events`` at once (for small logs and tests)."""
        return _concat(list(self._blocks(n_events)))


def _concat(parts: list[Interactions]) -> Interactions:
    if len(parts) == 1:
        return parts[0]
    return Interactions(
        users=np.concatenate([p.users for p in parts]),
        items=np.concatenate([p.items for p in parts]),
        ratings=np.concatenate([p.ratings for p in parts]),
        ts_ms=np.concatenate([p.ts_ms for p in parts]),
        events=np.concatenate([p.event_types() for p in parts]),
    )


def many_users_clicking(catalogue: Interactions, n_users: int, n_events: int, *,
                        seed: int = 0, start_ms: int = 1_700_000_000_000,
                        prefix: str = "load-") -> Interactions:
    """``n_events`` clicks by ``n_users`` synthetic users, all active at once.

    Why: MovieLens sessions keep few users active at a time, so a stream of them never
    shows what a crowd costs (one document write per distinct user per batch). Users
    are drawn uniformly (every user clicks throughout), items from the empirical item
    frequencies of ``catalogue`` (a real catalogue and popularity curve), one event per
    millisecond from ``start_ms``.

    >>> log = Interactions(np.array(["a", "b"]), np.array(["i1", "i2"]),
    ...                    np.ones(2, np.float32), np.arange(2, dtype=np.int64))
    >>> out = many_users_clicking(log, n_users=3, n_events=100, seed=1)
    >>> len(out), out.n_users() <= 3, set(out.items.tolist()) <= {"i1", "i2"}
    (100, True, True)
    """
    rng = np.random.default_rng(seed)
    users = np.array([f"{prefix}{u}" for u in range(n_users)])
    items, counts = np.unique(catalogue.items, return_counts=True)
    picked_items = items[rng.choice(len(items), n_events, p=counts / counts.sum())]
    return Interactions(users=users[rng.integers(0, n_users, n_events)],
                        items=picked_items, ratings=np.ones(n_events, np.float32),
                        ts_ms=start_ms + np.arange(n_events, dtype=np.int64),
                        events=np.full(n_events, "click"))
