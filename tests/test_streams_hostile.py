"""The worker's defences against hostile input and broker events, as pure logic.

Each test here failed on the code before the fixes it covers (issue: three ways to stop
ingestion); the whole-worker versions are the drills in ``tests/test_drills.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from common.errors import BadEvent
from common.events import interaction_json
from streams.dead_letters import DeadLetter, DeadLetterSink, encode_letter
from streams.epochs import Anchor, LogEpochs
from streams.messages import RawMessage, from_record
from streams.state import DecayedPopularity, Seen, UserState
from streams.validation import MAX_DEPTH, parse_interaction, parse_item

NOW = 1_800_000_000_000
TS = 1_700_000_000_000


def _msg(value: bytes, partition: int = 0, offset: int = 0, key: bytes = b"k") -> RawMessage:
    return RawMessage(value, key, partition, offset, 0.0)


# --- defect 1: oversized records ------------------------------------------------------------

class _Producer:
    """Refuses values over ``limit`` bytes as a broker would (MessageSizeTooLarge)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[bytes | None, dict[str, bytes]]] = []

    async def send(self, topic, value=None, key=None, *, headers=None):
        if value is not None and len(value) > self.limit:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        self.sent.append((value, dict(headers or [])))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _Metrics:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


@pytest.mark.parametrize("size", [900_000, 1_040_000, 2_000_000])
def test_a_record_of_any_size_is_dead_lettered_with_a_bounded_payload(size: int) -> None:
    producer, metrics = _Producer(limit=1_000_000), _Metrics()
    sink = DeadLetterSink(producer, "dlq", metrics, max_payload_bytes=524_288)
    letter = DeadLetter(_msg(b"x" * size, 2, 77), "payload too big", "interactions")
    asyncio.run(sink.send([letter]))
    [(value, headers)] = producer.sent
    assert value == b"x" * min(size, 524_288)
    assert headers["payload-bytes"] == str(size).encode()
    assert headers["payload-truncated"] == (b"1" if size > 524_288 else b"0")
    assert headers["source-offset"] == b"77" and headers["source-partition"] == b"2"
    assert metrics.counts["dead_letters"] == 1


def test_a_refused_letter_still_sends_its_coordinates_and_reason() -> None:
    producer, metrics = _Producer(limit=10), _Metrics()
    sink = DeadLetterSink(producer, "dlq", metrics, max_payload_bytes=100)
    asyncio.run(sink.send([DeadLetter(_msg(b"y" * 50, 1, 5), "bad", "items")]))
    [(value, headers)] = producer.sent
    assert value == b"" and headers["reason"] == b"bad" and headers["source-offset"] == b"5"
    assert b"MessageSizeTooLarge" in headers["payload-dropped"]
    assert metrics.counts["dead_letters"] == 1


def test_letter_encoding_keeps_the_digest_of_the_whole_original() -> None:
    import hashlib

    wire = encode_letter(DeadLetter(_msg(b"abcdef"), "r", "t"), 2)
    headers = dict(wire.headers)
    assert wire.value == b"ab" and wire.truncated
    assert headers["payload-sha256"] == hashlib.sha256(b"abcdef").hexdigest().encode()


# --- defect 2: offsets that move backwards --------------------------------------------------

def _lookup(log: dict[int, RawMessage]):
    async def lookup(partition: int, offset: int) -> str | None:
        msg = log.get(offset)
        return None if msg is None else msg.fingerprint()
    return lookup


def test_a_redelivery_keeps_the_epoch_and_a_replaced_log_starts_a_new_one() -> None:
    old_log = {o: _msg(f"old{o}".encode(), 0, o) for o in range(10)}
    epochs = LogEpochs({0: Anchor(0, 9, old_log[9].fingerprint())}, _lookup(old_log))
    # Redelivery of offsets 5..7 (the anchor record 9 is looked up: same log).
    asyncio.run(epochs.resolve([old_log[o] for o in (5, 6, 7)]))
    assert epochs.epoch(0) == 0 and not epochs.is_new(0, 7)
    # The topic was re-created: offsets 0..2 hold other records, offset 9 is gone.
    new_log = {o: _msg(f"new{o}".encode(), 0, o) for o in range(3)}
    epochs.lookup = _lookup(new_log)
    asyncio.run(epochs.resolve(list(new_log.values())))
    assert epochs.epoch(0) == 1 and epochs.is_new(0, 0) and epochs.regressions == 1
    # A user whose watermark was (0, 9) in epoch 0 is not skipped in epoch 1.
    user = UserState.new("u", 5)
    user.apply(parse_interaction(interaction_json("u", "i", "click", TS), now_ms=NOW), 0, 9, 0)
    assert user.redelivered(0, 2, epoch=0) and not user.redelivered(0, 2, epoch=1)


def test_the_anchor_record_inside_the_batch_is_used_without_a_lookup() -> None:
    log = {o: _msg(f"v{o}".encode(), 3, o) for o in range(6)}

    async def no_lookup(partition: int, offset: int) -> str | None:
        raise AssertionError("the batch holds the anchor record")

    epochs = LogEpochs({3: Anchor(2, 4, log[4].fingerprint())}, no_lookup)
    asyncio.run(epochs.resolve([log[o] for o in range(6)]))
    assert epochs.epoch(3) == 2
    assert epochs.advanced([log[5]]) == {3: Anchor(2, 5, log[5].fingerprint())}


def test_added_partitions_and_moved_users_are_not_mistaken_for_redeliveries() -> None:
    epochs = LogEpochs({0: Anchor(0, 500, "fp")})
    asyncio.run(epochs.resolve([_msg(b"x", partition=7, offset=0)]))  # a new partition
    assert epochs.epoch(7) == 0 and epochs.is_new(7, 0)
    user = UserState.new("u", 5)
    user.apply(parse_interaction(interaction_json("u", "i", "click", TS), now_ms=NOW), 0, 500)
    assert not user.redelivered(7, 0)  # the user's key now maps to partition 7


def test_anchors_round_trip_and_read_the_older_integer_form() -> None:
    a = Anchor(3, 12, "abc")
    assert Anchor.decode(a.encode()) == a and Anchor.decode("12") == Anchor(0, 12, "")


# --- defect 4: malformed bytes are rejected before the batch --------------------------------

@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"user_id":"u\xff","item_id":"i","event":"click","ts":1700000000000}', "UTF-8"),
    (b'{"user_id":"u","item_id":"i","event":"click","ts":1700000000000,"x":'
     + b"[" * 970 + b"]" * 970 + b"}", "nested deeper"),
    (b'{"user_id":"u1","item_id":"i","event":"click","ts":1700000000000,"user_id":"u2"}',
     "duplicate JSON key 'user_id'"),
    (b'{"user_id":"u1","item_id":"i","event":"click","ts":1700000000000,'
     b'"user\\u005fid":"u2"}', "duplicate JSON key"),
])
def test_malformed_bytes_are_bad_events_not_processing_errors(raw: bytes, fragment: str) -> None:
    with pytest.raises(BadEvent, match=fragment):
        parse_interaction(raw, now_ms=NOW)


def test_depth_within_the_limit_and_brackets_in_strings_are_fine() -> None:
    ok = {"user_id": "u", "item_id": "[" * 100, "event": "click", "ts": TS}
    assert parse_interaction(json.dumps(ok).encode(), now_ms=NOW).item_id == "[" * 100
    nested = b'{"item_id":"i","op":"upsert","ts":1700000000000,"attributes":{"a":' + \
        b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2) + b"}}"
    assert parse_item(nested, now_ms=NOW).item_id == "i"
    with pytest.raises(BadEvent, match="duplicate JSON key 'a'"):
        parse_item(b'{"item_id":"i","op":"upsert","ts":1700000000000,'
                   b'"attributes":{"a":1,"a":2}}', now_ms=NOW)


def test_a_poison_batch_is_isolated_in_log_steps_not_one_by_one() -> None:
    from streams.pipeline import BatchResult, process_reliably

    class Pipe:
        topic = "interactions"
        metrics = _Metrics()

        def __init__(self) -> None:
            self.calls = 0

        async def process(self, messages):
            self.calls += 1
            if any(m.value == b"poison" for m in messages):
                raise ValueError("a bug this event triggers")
            return BatchResult(applied=len(messages))

        def forget(self, messages) -> None:
            pass

    msgs = [_msg(b"poison" if j == 700 else b"ok", 0, j) for j in range(1024)]
    pipe = Pipe()
    result = asyncio.run(process_reliably(pipe, msgs, max_backoff_s=0.01))
    assert result.applied == 1023 and [d.message.offset for d in result.dead_letters] == [700]
    assert pipe.calls <= 2 * 10 + 1  # ~2 log2(1024) + 1, not 1025


# --- defect 5: unbounded event ids ----------------------------------------------------------

@pytest.mark.parametrize("event_id", ["x" * 60_000, "a\x00b", "esc\x1b[0m", ""])
def test_event_ids_follow_the_id_rules(event_id: str) -> None:
    raw = json.dumps({"user_id": "u", "item_id": "i", "event": "click", "ts": TS,
                      "event_id": event_id}).encode()
    with pytest.raises(BadEvent, match="event_id"):
        parse_interaction(raw, max_bytes=1 << 20, now_ms=NOW)


# --- defect 6: conflicting duplicates -------------------------------------------------------

def test_same_event_id_with_other_content_is_a_conflict_not_a_duplicate() -> None:
    def ev(item: str, ts: int = TS) -> object:
        return parse_interaction(json.dumps({"user_id": "u", "item_id": item, "event": "click",
                                             "ts": ts, "event_id": "e1"}).encode(), now_ms=NOW)
    user = UserState.new("u", 5)
    user.apply(ev("i1"), 0, 1)
    assert user.seen(ev("i1")) is Seen.DUPLICATE
    assert user.seen(ev("i2")) is Seen.CONFLICT and user.seen(ev("i1", TS + 1)) is Seen.CONFLICT
    again = UserState(user.doc, 5)
    assert again.seen(ev("i2")) is Seen.CONFLICT


# --- defect 8: popularity after an event-time jump ------------------------------------------

def test_popularity_stays_a_ranking_after_a_jump_of_decades() -> None:
    day = 86_400_000
    pop = DecayedPopularity(half_life_s=7 * 86_400)
    scores: dict[str, float] = {}

    def apply(events: list[tuple[str, float, int]]) -> None:
        factor = pop.rescale_factor(max(ts for _, _, ts in events))
        if factor is not None:
            for item in scores:
                scores[item] *= factor
        for item, inc in pop.increments(events).items():
            scores[item] = scores.get(item, 0.0) + inc

    y1998 = 883_612_800_000
    apply([("old-a", 1.0, y1998 + j * day // 10) for j in range(30)]
          + [("old-b", 1.0, y1998 + j * day // 10) for j in range(10)])
    apply([("new-x", 1.0, NOW - 5 * day), ("new-y", 1.0, NOW), ("new-y", 1.0, NOW)])
    apply([("backfill", 1.0, y1998 - day)])  # an old event after today's
    assert all(s > 0 for s in scores.values()), scores
    ranking = sorted(scores, key=lambda i: -scores[i])
    assert ranking[:2] == ["new-y", "new-x"]  # recent activity first
    assert ranking.index("old-a") < ranking.index("old-b")  # older history still ordered


# --- defect 9: compression codecs -----------------------------------------------------------

@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_codec_decodes_through_the_worker_path(codec: str) -> None:
    from aiokafka.structs import ConsumerRecord

    from common.compression import codec_id

    values = [interaction_json(f"u{j}", f"i{j}", "click", TS + j) for j in range(20)]
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec_id(codec),
                                        is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for j, value in enumerate(values):
        builder.append(j, timestamp=TS + j, key=f"u{j}".encode(), value=value, headers=[])
    records = MemoryRecords(bytes(builder.build()))
    batch = records.next_batch()
    assert batch is not None and batch.compression_type == codec_id(codec)
    decoded = []
    for rec in batch:
        cr = ConsumerRecord("interactions", 0, rec.offset, rec.timestamp, 0, rec.key,
                            rec.value, None, len(rec.key or b""), len(rec.value or b""),
                            rec.headers)
        decoded.append(parse_interaction(from_record(cr).value, now_ms=NOW))
    assert [e.user_id for e in decoded] == [f"u{j}" for j in range(20)]


def test_the_client_has_every_codec_producers_may_use() -> None:
    from common.compression import missing_codecs

    assert missing_codecs() == []
