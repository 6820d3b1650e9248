"""Pure logic of the worker: validation, idempotent user state, decayed popularity."""

from __future__ import annotations

import json
import math

import pytest

from common.errors import BadEvent
from common.events import interaction_json
from devstack.malformed import KINDS, malformed_interaction, malformed_interactions
from streams.epochs import Anchor, LogEpochs
from streams.state import DecayedPopularity, Seen, UserState
from streams.validation import derive_event_id, parse_interaction, parse_item

NOW = 1_800_000_000_000


def ev(user: str = "u1", item: str = "i1", ts: int = 1_700_000_000_000, **extra) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "event": "click", "ts": ts,
                       **extra}).encode()


def test_valid_interaction_round_trips_the_producer_encoding() -> None:
    raw = interaction_json("u7", "i9", "rating", 1_700_000_000_123, value=4.0)
    rec = parse_interaction(raw, now_ms=NOW)
    assert (rec.user_id, rec.item_id, rec.event, rec.ts, rec.value) == (
        "u7", "i9", "rating", 1_700_000_000_123, 4.0)
    assert rec.event_id == derive_event_id("u7", "i9", "rating", 1_700_000_000_123)


def test_event_id_is_kept_when_given_and_stable_when_derived() -> None:
    assert parse_interaction(ev(event_id="abc"), now_ms=NOW).event_id == "abc"
    a = parse_interaction(ev(), now_ms=NOW).event_id
    assert a == parse_interaction(ev(), now_ms=NOW).event_id
    assert a != parse_interaction(ev(ts=1_700_000_000_001), now_ms=NOW).event_id


@pytest.mark.parametrize("kind", KINDS)
def test_every_malformed_kind_is_rejected_with_a_reason(kind: str) -> None:
    import random

    raw = malformed_interaction(kind, random.Random(0), max_bytes=1000)
    with pytest.raises(BadEvent) as err:
        parse_interaction(raw, max_bytes=1000, now_ms=NOW)
    assert len(err.value.reason) > 5


@pytest.mark.parametrize(("raw", "fragment"), [
    (None, "empty message"),
    (ev(ts=True), r"\$\.ts"),
    (ev(value="4"), r"\$\.value"),
    (ev(item=""), "'item_id'"),
    (ev(user="x" * 300), "'user_id'"),
    (ev(event_id=""), "event_id"),
])
def test_specific_rules(raw: bytes | None, fragment: str) -> None:
    with pytest.raises(BadEvent, match=fragment):
        parse_interaction(raw, now_ms=NOW)


def test_malformed_generator_is_deterministic_and_covers_all_kinds() -> None:
    a, b = malformed_interactions(48, seed=3), malformed_interactions(48, seed=3)
    assert a == b and len(a) == 48


def test_item_events() -> None:
    up = parse_item(json.dumps({"item_id": "i1", "op": "upsert", "ts": 1_700_000_000_000,
                                "attributes": {"genres": ["Drama"]}}).encode(), now_ms=NOW)
    assert up.op == "upsert" and up.attributes == {"genres": ["Drama"]}
    with pytest.raises(BadEvent, match=r"\$\.op"):
        parse_item(json.dumps({"item_id": "i1", "op": "merge", "ts": 1}).encode(), now_ms=NOW)
    with pytest.raises(BadEvent, match=r"\$\.attributes"):
        parse_item(json.dumps({"item_id": "i1", "op": "upsert", "ts": 1_700_000_000_000,
                               "attributes": [1]}).encode(), now_ms=NOW)


def test_user_state_history_is_bounded_deduplicated_newest_last() -> None:
    st = UserState.new("u", history_size=3)
    for off, item in enumerate(["a", "b", "a", "c", "d"]):
        st.apply(parse_interaction(ev(item=item, ts=1_700_000_000_000 + off), now_ms=NOW),
                 partition=0, offset=off)
    assert list(st.history) == ["a", "c", "d"]
    assert st.n_events == 5 and st.watermark == (0, 4, 0)


def test_user_state_detects_redelivery_and_producer_duplicates() -> None:
    st = UserState.new("u", history_size=5)
    e = parse_interaction(ev(), now_ms=NOW)
    st.apply(e, partition=2, offset=10)
    assert st.redelivered(2, 10) and st.redelivered(2, 3)
    assert not st.redelivered(2, 11) and not st.redelivered(1, 5)
    assert st.seen(e) is Seen.DUPLICATE
    assert st.seen(parse_interaction(ev(item="other"), now_ms=NOW)) is Seen.NEW
    again = UserState(st.doc, history_size=5)  # as read back from MongoDB
    assert again.redelivered(2, 10) and again.seen(e) is Seen.DUPLICATE
    assert again.n_events == 1
    assert not again.redelivered(2, 10, epoch=1)  # the log was replaced: not a redelivery


def test_user_state_remembers_the_last_32_event_ids_and_tells_conflicts() -> None:
    """The id index and the stored list agree after eviction, and with a state rebuilt
    from the document; a legacy bare-id entry still counts as a duplicate."""
    st = UserState.new("u", history_size=5)
    st.doc.event_ids = ["legacy-id"]
    events = [parse_interaction(ev(item=f"i{j}", ts=1_700_000_000_000 + j, event_id=f"e{j}"),
                                now_ms=NOW) for j in range(40)]
    for j, e in enumerate(events):
        assert st.seen(e) is Seen.NEW
        st.apply(e, partition=0, offset=j)
    assert [x[0] for x in st.doc.event_ids] == [f"e{j}" for j in range(8, 40)]
    rebuilt = UserState(st.doc, history_size=5)
    for state in (st, rebuilt):
        assert state.seen(events[7]) is Seen.NEW  # evicted: a late producer retry is new
        assert state.seen(events[8]) is Seen.DUPLICATE
        other = parse_interaction(ev(item="x", ts=1_700_000_000_039, event_id="e39"),
                                  now_ms=NOW)
        assert state.seen(other) is Seen.CONFLICT  # same id, other content
    legacy = UserState(UserState.new("v", 5).doc, 5)
    legacy.doc.event_ids = ["e1"]
    assert legacy.seen(events[1]) is Seen.DUPLICATE


def test_decayed_popularity_halves_per_half_life() -> None:
    pop = DecayedPopularity(half_life_s=60, ref_ms=0)
    inc = pop.increments([("old", 1.0, 0), ("new", 1.0, 60_000), ("new", 2.0, 120_000)])
    assert inc["old"] == 1.0
    assert inc["new"] == pytest.approx(2.0 + 2.0 * 4.0)


def test_decayed_popularity_rescales_before_overflow() -> None:
    pop = DecayedPopularity(half_life_s=1, ref_ms=0)
    assert pop.rescale_factor(10_000) is None
    factor = pop.rescale_factor(50_000)
    assert factor == pytest.approx(2.0 ** -50) and pop.ref_ms == 50_000
    assert math.isfinite(pop.increments([("x", 1.0, 60_000)])["x"])


def test_partition_anchors_gate_counting() -> None:
    epochs = LogEpochs({0: Anchor(0, 100, "fp")})
    assert not epochs.is_new(0, 100) and epochs.is_new(0, 101) and epochs.is_new(1, 0)
    with pytest.raises(ValueError):
        DecayedPopularity(half_life_s=0)


class _FlakyPipeline:
    """Stands in for a pipeline: fails while a dependency is 'down', or on a poison event."""

    topic = "interactions"

    def __init__(self, outages: int = 0, poison: bytes | None = None) -> None:
        import statsd

        self.outages = outages
        self.poison = poison
        self.calls: list[int] = []
        self.forgotten = 0
        self.metrics = statsd.StatsClient("127.0.0.1", 9)  # discard port

    async def process(self, messages):
        import pymongo.errors

        from streams.pipeline import BatchResult

        self.calls.append(len(messages))
        if self.outages:
            self.outages -= 1
            raise pymongo.errors.ServerSelectionTimeoutError("mongo down")
        if any(m.value == self.poison for m in messages):
            raise ZeroDivisionError("bug triggered by this event")
        return BatchResult(applied=len(messages))

    def forget(self, messages) -> None:
        self.forgotten += 1


def _msgs(n: int):
    from streams.messages import RawMessage

    return [RawMessage(f"v{j}".encode(), b"k", 0, j, 0.0) for j in range(n)]


def test_outages_are_retried_until_the_batch_goes_through() -> None:
    import asyncio

    from streams.pipeline import process_reliably

    pipe = _FlakyPipeline(outages=3)
    result = asyncio.run(process_reliably(pipe, _msgs(5), max_backoff_s=0.01))
    assert result.applied == 5 and not result.dead_letters
    assert pipe.calls == [5, 5, 5, 5] and pipe.forgotten == 3


def test_a_poison_event_alone_goes_to_dead_letters() -> None:
    import asyncio

    from streams.pipeline import process_reliably

    pipe = _FlakyPipeline(poison=b"v2")
    result = asyncio.run(process_reliably(pipe, _msgs(4), max_backoff_s=0.01))
    assert result.applied == 3
    assert [d.message.value for d in result.dead_letters] == [b"v2"]
    assert "ZeroDivisionError" in result.dead_letters[0].reason
    assert pipe.calls == [4, 2, 2, 1, 1]  # halves, in order: the poison is isolated


def test_importing_the_worker_app_builds_nothing() -> None:
    """``streams.app`` reads no environment and builds no Faust app at import."""
    import importlib

    import streams.app

    module = importlib.reload(streams.app)
    assert "app" not in vars(module)  # built only on first access, for `faust -A`
