"""The dead-letter topic: every rejected record lands there, whatever its size.

A record that fits on its topic must never stop a consumer. The dangerous case is the
record just under the broker's limit: copied verbatim into a dead letter, with headers
added, it no longer fits on the dead-letter topic, the send fails, the batch is never
acknowledged and every restart reads the same poison again. So a dead letter carries
at most ``max_payload_bytes`` of the original value (and a bounded key and reason), and
its headers say what was cut: ``payload-bytes`` (original size), ``payload-truncated``
(``1``/``0``) and ``payload-sha256`` (of the whole original, to match it against the
source record). If even that send is refused, a letter with the coordinates and the
reason only is sent instead.

Headers, all UTF-8: ``reason``, ``source-topic``, ``source-partition``,
``source-offset``, ``payload-bytes``, ``payload-truncated``, ``payload-sha256``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

import statsd
from aiokafka.errors import KafkaError

from streams.messages import RawMessage

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
MAX_REASON_CHARS = 1024


@dataclass(frozen=True)
class DeadLetter:
    """A record the worker will not apply, and why."""

    message: RawMessage
    reason: str
    topic: str


@dataclass(frozen=True)
class Letter:
    """A dead letter as it goes on the wire."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    truncated: bool


class Sender(Protocol):
    """What the sink needs of a Kafka producer (``AIOKafkaProducer`` has it)."""

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   *, headers: list[tuple[str, bytes]] | None = None) -> Awaitable[object]:
        ...


def encode_letter(letter: DeadLetter, max_payload_bytes: int) -> Letter:
    """The wire form of ``letter``: payload cut to ``max_payload_bytes``, headers say so.

    >>> from streams.messages import RawMessage
    >>> msg = RawMessage(b"x" * 10, b"k", 3, 42, 0.0)
    >>> out = encode_letter(DeadLetter(msg, "too big", "interactions"), 4)
    >>> out.value, out.truncated, dict(out.headers)["payload-bytes"]
    (b'xxxx', True, b'10')
    """
    msg = letter.message
    value = msg.value or b""
    cut = value[:max_payload_bytes]
    key = None if msg.key is None else msg.key[:MAX_KEY_BYTES]
    headers = coordinates(letter) + [
        ("payload-bytes", str(len(value)).encode()),
        ("payload-truncated", b"1" if len(cut) < len(value) else b"0"),
        ("payload-sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    return Letter(key, cut, headers, len(cut) < len(value))


def coordinates(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Where the record came from and why it was rejected (always sent)."""
    return [("reason", letter.reason[:MAX_REASON_CHARS].encode("utf-8", "replace")),
            ("source-topic", letter.topic.encode()),
            ("source-partition", str(letter.message.partition).encode()),
            ("source-offset", str(letter.message.offset).encode())]


class DeadLetterSink:
    """Sends dead letters and counts them (the one place ``dead_letters`` is counted)."""

    def __init__(self, producer: Sender, topic: str, metrics: statsd.StatsClient,
                 max_payload_bytes: int = 65536) -> None:
        if max_payload_bytes < 0:
            raise ValueError(f"max_payload_bytes must be >= 0, got {max_payload_bytes}")
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.max_payload_bytes = max_payload_bytes
        self.sent = 0

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter; raise only if not even the coordinates could be sent."""
        wires = [encode_letter(letter, self.max_payload_bytes) for letter in letters]
        outcomes = await asyncio.gather(*(self._send_one(w) for w in wires),
                                        return_exceptions=True)
        for letter, outcome in zip(letters, outcomes, strict=True):
            if isinstance(outcome, KafkaError):
                log.error("dead letter for %s[%d]@%d refused (%r); sending its coordinates "
                          "and reason only", letter.topic, letter.message.partition,
                          letter.message.offset, outcome)
                headers = coordinates(letter) + [("payload-dropped", repr(outcome).encode())]
                await (await self.producer.send(self.topic, b"", None, headers=headers))
            elif isinstance(outcome, BaseException):
                raise outcome
        if letters:
            truncated = sum(w.truncated for w in wires)
            self.sent += len(letters)
            self.metrics.incr("dead_letters", len(letters))
            if truncated:
                self.metrics.incr("dead_letters.truncated", truncated)
            log.warning("%d event(s) sent to %s: e.g. %s", len(letters), self.topic,
                        letters[0].reason[:200])

    async def _send_one(self, wire: Letter) -> object:
        return await (await self.producer.send(self.topic, wire.value, wire.key,
                                               headers=wire.headers))
