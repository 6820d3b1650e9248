"""Per-user serving state and decayed popularity, with exactly-once bookkeeping.

The worker is at-least-once (Kafka redelivers events after a crash); these classes make
the effects idempotent. A user's events all live on one partition (key = user id), so
the ``(partition, offset)`` of the last applied event is a watermark: anything at or
below it was applied already. Recent event ids catch the other kind of duplicate, the
same event produced twice. Watermarks are stored with the state they protect (in the
user's MongoDB document, and in Redis next to the popularity counts).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.stores import UserDoc
from streams.records import Interaction

EVENT_ID_MEMORY = 32  # recent event ids per user: producer retries are seconds apart


@dataclass
class UserState:
    """What the worker knows about one user between MongoDB writes."""

    user_id: str
    history: deque[str]
    n_events: int = 0
    last_event_ms: int = 0
    partition: int = -1
    offset: int = -1
    event_ids: deque[str] = field(default_factory=lambda: deque(maxlen=EVENT_ID_MEMORY))

    @classmethod
    def new(cls, user_id: str, history_size: int) -> UserState:
        return cls(user_id, deque(maxlen=history_size))

    @classmethod
    def from_doc(cls, doc: UserDoc, history_size: int) -> UserState:
        wm = doc.watermark or {}
        return cls(doc.user_id, deque(doc.history, maxlen=history_size), doc.n_events,
                   doc.last_event_ms, int(wm.get("p", -1)), int(wm.get("o", -1)),
                   deque(doc.event_ids, maxlen=EVENT_ID_MEMORY))

    def redelivered(self, partition: int, offset: int) -> bool:
        """True for an event at or below the watermark: Kafka delivered it again."""
        return partition == self.partition and offset <= self.offset

    def duplicate_id(self, event: Interaction) -> bool:
        """True for an event whose id was applied already: the producer sent it twice."""
        return event.event_id in self.event_ids

    def apply(self, event: Interaction, partition: int, offset: int) -> None:
        """Record the event: bounded, de-duplicated history (newest last) and counters."""
        if event.item_id in self.history:
            self.history.remove(event.item_id)
        self.history.append(event.item_id)
        self.n_events += 1
        self.last_event_ms = max(self.last_event_ms, event.ts)
        self.partition, self.offset = partition, offset
        self.event_ids.append(event.event_id)

    def to_doc(self, vector: list[float], model_version: str) -> UserDoc:
        return UserDoc(user_id=self.user_id, vector=vector, model_version=model_version,
                       history=list(self.history), n_events=self.n_events,
                       last_event_ms=self.last_event_ms,
                       watermark={"p": self.partition, "o": self.offset},
                       event_ids=list(self.event_ids))


class DecayedPopularity:
    """Exponentially time-decayed counts, kept as increments at a reference time.

    An event of weight ``w`` at time ``t`` adds ``w * 2 ** ((t - ref) / half_life)``;
    all scores share the factor ``2 ** ((ref - now) / half_life)``, so the order is that
    of the decayed counts without touching every item on every event. When increments
    grow large the reference moves forward and stored scores are rescaled once.

    >>> pop = DecayedPopularity(half_life_s=10, ref_ms=0)
    >>> inc = pop.increments([("a", 1.0, 0), ("b", 1.0, 10_000), ("b", 1.0, 10_000)])
    >>> inc["a"], inc["b"]
    (1.0, 4.0)
    """

    MAX_EXPONENT = 40.0  # rescale before 2**exponent loses precision in a double

    def __init__(self, half_life_s: float, ref_ms: int | None = None,
                 offsets: dict[int, int] | None = None) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_s = half_life_s
        self.ref_ms = ref_ms
        self.offsets: dict[int, int] = dict(offsets or {})

    def counts_event(self, partition: int, offset: int) -> bool:
        """Whether this event is new for popularity (not redelivered)."""
        return offset > self.offsets.get(partition, -1)

    def increments(self, events: Iterable[tuple[str, float, int]]) -> dict[str, float]:
        """Score increments for ``(item_id, weight, ts_ms)`` events."""
        out: dict[str, float] = {}
        for item, weight, ts in events:
            if self.ref_ms is None:
                self.ref_ms = ts
            exponent = (ts - self.ref_ms) / 1000.0 / self.half_life_s
            out[item] = out.get(item, 0.0) + weight * math.pow(2.0, exponent)
        return out

    def rescale_factor(self, latest_ms: int) -> float | None:
        """If the reference is too old, move it to ``latest_ms``; return the score factor.

        The factor may underflow to 0.0 after a very long gap: scores that old have
        decayed to nothing anyway.
        """
        if self.ref_ms is None or latest_ms <= 0:
            return None
        exponent = (latest_ms - self.ref_ms) / 1000.0 / self.half_life_s
        if exponent < self.MAX_EXPONENT:
            return None
        self.ref_ms = latest_ms
        return math.pow(2.0, -exponent)

    def meta(self) -> dict[str, float | int | None]:
        return {"ref_ms": self.ref_ms, "half_life_s": self.half_life_s}
