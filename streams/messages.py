"""A Kafka record as the worker's pipelines see it, free of client-library types.

Both consumers (``interactions`` and ``items``) turn every fetched record into a
:class:`RawMessage` with :func:`from_record`; that one function is the worker's decode
path after the client library has decompressed the record batch.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple


class RawMessage(NamedTuple):
    """One record: raw bytes plus its coordinates.

    A named tuple, not a frozen dataclass: one is built per consumed record, and a frozen
    dataclass's ``__init__`` (an ``object.__setattr__`` per field) cost ~6% of the
    worker's GIL time with 5,000 users clicking at once.
    """

    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    timestamp_s: float  # broker/producer timestamp: when the click was published

    def fingerprint(self) -> str:
        """A short digest of key and value: tells two logs' records at one offset apart.

        >>> RawMessage(b"v", b"k", 0, 7, 0.0).fingerprint() == \\
        ...     RawMessage(b"v", b"k", 1, 9, 5.0).fingerprint()
        True
        """
        h = hashlib.blake2b(digest_size=8)
        h.update(b"" if self.key is None else self.key)
        h.update(b"\x00")
        h.update(b"" if self.value is None else self.value)
        return h.hexdigest()


def from_record(record: Any) -> RawMessage:
    """An aiokafka ``ConsumerRecord`` (value already decompressed) as a :class:`RawMessage`."""
    return RawMessage(record.value, record.key, record.partition, record.offset,
                      (record.timestamp or 0) / 1000.0)
