"""Per-user serving state and decayed popularity, with exactly-once bookkeeping.

The worker is at-least-once (Kafka redelivers events after a crash); these classes make
the effects idempotent. A user's events all live on one partition (key = user id), so
the ``(partition, offset)`` of the last applied event, in the partition's epoch (see
:mod:`streams.epochs`), is a watermark: anything at or below it was applied already.
Recent event ids catch the other kind of duplicate, the same event produced twice, and
tell it from a *conflicting* one (same id, different content), which is dead-lettered.
Watermarks are stored with the state they protect (in the user's MongoDB document, and
in Redis next to the popularity counts).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from enum import Enum
from typing import Any

from common.events import Interaction
from common.stores import UserDoc

EVENT_ID_MEMORY = 32  # recent event ids per user: producer retries are seconds apart


class Seen(Enum):
    """What the recent event ids say about an event."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same id, same content: the producer sent it twice
    CONFLICT = "conflict"  # same id, different content: a producer bug, dead-lettered


def content_digest(event: Interaction) -> str:
    """What an event id must keep meaning: item, type, time and value."""
    text = f"{event.item_id}\x1f{event.event}\x1f{event.ts}\x1f{event.value}"
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _id_and_digest(entry: Any) -> tuple[str, str]:
    """``(event id, content digest)`` of a stored ``event_ids`` entry; an entry stored
    before digests were kept is a bare id (digest ``""``: unknown)."""
    return (entry, "") if isinstance(entry, str) else (entry[0], entry[1])


class UserState:
    """The worker's rules over one user's stored document.

    There is one shape of a user: the :class:`~common.stores.UserDoc` the worker writes
    and the API reads. This class holds that document (no copy) and applies events to
    it; the pipeline then sets the vector and writes the same document back.
    """

    def __init__(self, doc: UserDoc, history_size: int) -> None:
        self.doc = doc
        self.history_size = history_size
        #: ``doc.event_ids`` as ``{event id: content digest}`` (built on first use): a
        #: lookup per event instead of a scan of the 32 entries
        self._ids: dict[str, str] | None = None

    @classmethod
    def new(cls, user_id: str, history_size: int) -> UserState:
        return cls(UserDoc(user_id=user_id, vector=[], model_version=""), history_size)

    @property
    def history(self) -> list[str]:
        """The items the API filters out (derived from the recent events)."""
        return self.doc.history

    @property
    def n_events(self) -> int:
        return self.doc.n_events

    @property
    def watermark(self) -> tuple[int, int, int]:
        """``(partition, offset, epoch)`` of the last applied event (``(-1, -1, 0)``)."""
        wm = self.doc.watermark or {}
        return int(wm.get("p", -1)), int(wm.get("o", -1)), int(wm.get("e", 0))

    def redelivered(self, partition: int, offset: int, epoch: int = 0) -> bool:
        """True for an event at or below the watermark of the same log: Kafka sent it again."""
        p, o, e = self.watermark
        return partition == p and epoch == e and offset <= o

    def _index(self) -> dict[str, str]:
        if self._ids is None:  # entries stored before digests were kept are bare ids
            self._ids = dict(map(_id_and_digest, self.doc.event_ids))
        return self._ids

    def seen(self, event: Interaction) -> Seen:
        """Whether this event's id was applied already, and with the same content."""
        digest = self._index().get(event.event_id or "")
        if digest is None:
            return Seen.NEW
        return Seen.DUPLICATE if not digest or digest == content_digest(event) \
            else Seen.CONFLICT

    def apply(self, event: Interaction, partition: int, offset: int, epoch: int = 0) -> None:
        """Record the event: the user's recent events (the last ``history_size``,
        newest last; the one history everything else derives from) and counters."""
        doc = self.doc
        doc.recent.append((event.item_id, event.event))
        del doc.recent[:-self.history_size]
        doc.n_events += 1
        doc.last_event_ms = max(doc.last_event_ms, int(event.ts))
        doc.watermark = {"p": partition, "o": offset, "e": epoch}
        event_id = event.event_id or ""
        index = self._index()
        ids = doc.event_ids
        if event_id in index:  # rare: an id applied again once its digest was unknown
            ids[:] = [e for e in ids if _id_and_digest(e)[0] != event_id]
        digest = content_digest(event)
        ids.append([event_id, digest])  # in place: durable copies are snapshots
        index[event_id] = digest
        if len(ids) > EVENT_ID_MEMORY:
            for old in ids[:-EVENT_ID_MEMORY]:
                index.pop(_id_and_digest(old)[0], None)
            del ids[:-EVENT_ID_MEMORY]


class DecayedPopularity:
    """Exponentially time-decayed counts, kept as increments at a reference time.

    An event of weight ``w`` at time ``t`` adds ``w * 2 ** ((t - ref) / half_life)``;
    all scores share the factor ``2 ** ((ref - now) / half_life)``, so the order is that
    of the decayed counts without touching every item on every event. When increments
    grow large the reference moves forward and stored scores are rescaled once.

    Event time may jump (a backfill from 1998, then one event of today). Exact decay
    would then take every older score to exactly 0.0 and the list would be ordered by
    item id. Two floors keep it a ranking: a rescale divides by at most ``2 ** 40`` at a
    time (the older history then orders only the items without recent events, far below
    any recent one), and an event older than the reference adds at least
    ``weight * 2 ** -1000`` (very old events still count, by number).

    >>> pop = DecayedPopularity(half_life_s=10, ref_ms=0)
    >>> inc = pop.increments([("a", 1.0, 0), ("b", 1.0, 10_000), ("b", 1.0, 10_000)])
    >>> inc["a"], inc["b"]
    (1.0, 4.0)
    """

    MAX_EXPONENT = 40.0  # rescale before 2**exponent loses precision in a double
    MIN_EXPONENT = -1000.0  # 2**-1000 is still a normal double: old events keep counting

    def __init__(self, half_life_s: float, ref_ms: int | None = None) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_s = half_life_s
        self.ref_ms = ref_ms

    def increments(self, events: Iterable[tuple[str, float, int]]) -> dict[str, float]:
        """Score increments for ``(item_id, weight, ts_ms)`` events."""
        out: dict[str, float] = {}
        for item, weight, ts in events:
            if self.ref_ms is None:
                self.ref_ms = ts
            exponent = max((ts - self.ref_ms) / 1000.0 / self.half_life_s,
                           self.MIN_EXPONENT)
            out[item] = out.get(item, 0.0) + weight * math.pow(2.0, exponent)
        return out

    def rescale_factor(self, latest_ms: int) -> float | None:
        """If the reference is too old, move it to ``latest_ms``; return the score factor.

        The factor is at least ``2 ** -MAX_EXPONENT``: after a jump in event time the
        older scores shrink far below any new increment but never all to 0.0.
        """
        if self.ref_ms is None or latest_ms <= 0:
            return None
        exponent = (latest_ms - self.ref_ms) / 1000.0 / self.half_life_s
        if exponent < self.MAX_EXPONENT:
            return None
        self.ref_ms = latest_ms
        return math.pow(2.0, -min(exponent, self.MAX_EXPONENT))

    def meta(self) -> dict[str, float | int | None]:
        return {"ref_ms": self.ref_ms, "half_life_s": self.half_life_s}
