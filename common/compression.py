"""Kafka compression codecs the worker must read.

Producers in production compress (gzip, snappy, lz4, zstd) and Apache Kafka stores
their batches as sent, so a consumer without a codec cannot read them. aiokafka gets
snappy, lz4 and zstd from its extras (``aiokafka[snappy,lz4,zstd]``, pinned in
requirements.txt); :func:`missing_codecs` lets the worker refuse to start without them.
"""

from __future__ import annotations

from aiokafka import codec
from aiokafka.record.default_records import DefaultRecordBase

CODECS = {
    "gzip": (DefaultRecordBase.CODEC_GZIP, codec.has_gzip),
    "snappy": (DefaultRecordBase.CODEC_SNAPPY, codec.has_snappy),
    "lz4": (DefaultRecordBase.CODEC_LZ4, codec.has_lz4),
    "zstd": (DefaultRecordBase.CODEC_ZSTD, codec.has_zstd),
}


def codec_id(name: str) -> int:
    """The record-batch attribute value of codec ``name`` (``gzip`` → 1)."""
    return CODECS[name][0]


def missing_codecs() -> list[str]:
    """Codecs the Kafka client cannot decode in this environment (should be none)."""
    return [name for name, (_, available) in CODECS.items() if not available()]
