"""Which incarnation of a partition's log an offset belongs to.

Exactly-once effects rest on watermarks: an event at or below the last applied
``(partition, offset)`` was applied already. That holds only while offsets keep
growing. When a topic is deleted and re-created, or a broker loses its log, offsets
start again from 0, and every event of every known user looked like a redelivery and
was dropped silently.

So every watermark carries an *epoch* per partition, and the worker keeps, per
partition, an :class:`Anchor`: the epoch, the last applied offset, and a fingerprint of
the record at that offset. Offsets only go back in two cases: Kafka redelivers what
was not yet committed (same log, the record at the anchor is still the same), or the
log was replaced (the record at the anchor is different or gone). A batch that reaches
back to or below its partition's anchor is therefore checked once: the record at the
anchor offset is taken from the batch or looked up, and if its fingerprint differs the
partition gets a new epoch. Old watermarks, which carry the old epoch, then no longer
hide new events. Normal forward progress costs nothing.

Two decisions, written down:
- An identical record at the identical offset counts as the same log (a replay of the
  very same bytes after a re-creation is treated as a redelivery).
- An anchor stored by an older version without a fingerprint cannot be checked; such a
  partition keeps its epoch until the next anchor is written (one batch later).

Adding partitions is harmless: new partitions have no anchor, and a user whose key
moves to another partition has a watermark naming the old partition, which never hides
events of the new one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from streams.messages import RawMessage

log = logging.getLogger(__name__)

#: ``await lookup(partition, offset)`` → fingerprint of the record there, or ``None``
#: when the log has no record at that offset. Raises if it cannot tell (broker down).
RecordLookup = Callable[[int, int], Awaitable[str | None]]


@dataclass(frozen=True)
class Anchor:
    """The last applied offset of one partition, in its epoch, with its fingerprint."""

    epoch: int = 0
    offset: int = -1
    fingerprint: str = ""

    def encode(self) -> str:
        return json.dumps({"e": self.epoch, "o": self.offset, "fp": self.fingerprint},
                          separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> Anchor:
        """Parse a stored anchor; a bare integer is the older offset-only format.

        >>> Anchor.decode("41"), Anchor.decode('{"e":2,"o":7,"fp":"ab"}').epoch
        (Anchor(epoch=0, offset=41, fingerprint=''), 2)
        """
        value = json.loads(raw)
        if isinstance(value, int):
            return cls(0, value, "")
        return cls(int(value["e"]), int(value["o"]), str(value.get("fp") or ""))


#: A partition without an anchor (shared: asked twice per event, and a frozen dataclass
#: costs microseconds to build).
NO_ANCHOR = Anchor()


class LogEpochs:
    """The anchors of one topic's partitions, and the regression check."""

    def __init__(self, anchors: Mapping[int, Anchor] | None = None,
                 lookup: RecordLookup | None = None) -> None:
        self.anchors: dict[int, Anchor] = dict(anchors or {})
        self.lookup = lookup
        self.regressions = 0

    def epoch(self, partition: int) -> int:
        return self.anchors.get(partition, NO_ANCHOR).epoch

    def is_new(self, partition: int, offset: int) -> bool:
        """Whether an event of the current epoch is beyond the partition's anchor."""
        return offset > self.anchors.get(partition, NO_ANCHOR).offset

    async def resolve(self, messages: Sequence[RawMessage]) -> None:
        """Start a new epoch for every partition whose log was replaced under us."""
        by_partition: dict[int, list[RawMessage]] = {}
        for msg in messages:
            by_partition.setdefault(msg.partition, []).append(msg)
        for partition, msgs in by_partition.items():
            anchor = self.anchors.get(partition)
            if anchor is None or anchor.offset < 0 or not anchor.fingerprint:
                continue
            if min(m.offset for m in msgs) > anchor.offset:
                continue  # forward progress: the common case
            if await self._same_log(partition, anchor, msgs):
                continue  # a redelivery: the watermarks will skip what was applied
            self.regressions += 1
            log.warning("partition %d: offsets went back to %d below the anchor %d of a "
                        "different log (topic re-created or broker log lost); starting "
                        "epoch %d", partition, min(m.offset for m in msgs), anchor.offset,
                        anchor.epoch + 1)
            self.anchors[partition] = Anchor(anchor.epoch + 1, -1, "")

    async def _same_log(self, partition: int, anchor: Anchor,
                        msgs: Sequence[RawMessage]) -> bool:
        for m in msgs:
            if m.offset == anchor.offset:
                return m.fingerprint() == anchor.fingerprint
        if self.lookup is None:
            return False
        return await self.lookup(partition, anchor.offset) == anchor.fingerprint

    def advanced(self, messages: Sequence[RawMessage]) -> dict[int, Anchor]:
        """The anchors after applying ``messages`` (to store with the batch's effects)."""
        last: dict[int, RawMessage] = {}
        for msg in messages:
            prev = last.get(msg.partition)
            if prev is None or msg.offset > prev.offset:
                last[msg.partition] = msg
        out = {}
        for partition, msg in last.items():
            current = self.anchors.get(partition, Anchor())
            if msg.offset > current.offset:
                out[partition] = Anchor(current.epoch, msg.offset, msg.fingerprint())
        return out

    def update(self, anchors: Mapping[int, Anchor]) -> None:
        self.anchors.update(anchors)

    def reload(self, anchors: Mapping[int, Anchor]) -> None:
        """Replace every anchor with the stored ones (after a restart or a failed batch)."""
        self.anchors = dict(anchors)
