"""The pure logic of ``scripts.bench_e2e``: what "changed" means, how percentiles are
reported, how the ingest rate inside a window is counted. The benchmark itself needs the
whole stack and minutes; these rules decide what its JSON claims, so they are pinned."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from datasets.types import Interactions
from scripts.bench_e2e import SendLog, changed_beyond, sample_pairs, summary


def test_the_history_filter_alone_is_not_a_change() -> None:
    before = ["a", "b", "c", "d"]
    # click on a: the API drops it, the next item fills the list: no change beyond it
    assert changed_beyond(before, ["b", "c", "d", "e"], {"a"}) == (False, False)
    # an item evicted from a full history reappears: it is removed from both lists
    assert changed_beyond(before, ["b", "old", "c", "d"], {"a", "old"}) == (False, False)
    assert changed_beyond(before, ["b", "d", "c", "e"], {"a"}) == (True, False)
    assert changed_beyond(before, ["b", "c", "x", "d"], {"a"}) == (True, True)
    assert changed_beyond(before, [], {"a"}) == (False, False)  # nothing to compare


def test_summary_prints_p99_only_from_enough_samples_and_keeps_timeouts() -> None:
    # percentiles are observed samples, rounded up (numpy's "higher"), never interpolated
    few = summary([0.1, 0.2, 0.3, float("inf")])
    assert few == {"n": 4, "timeouts": 1, "p50_s": 0.3, "p90_s": None, "p99_s": None,
                   "max_s": None}
    many = summary([j / 100 for j in range(1, 201)])  # p99 of 200: the second largest
    assert many["n"] == 200 and many["p99_s"] == 1.99 and many["max_s"] == 2.0
    assert summary([])["n"] == 0 and summary([])["p50_s"] is None


def test_send_log_counts_the_events_of_a_window() -> None:
    log = SendLog()
    for j in range(10):  # a chunk of 100 events every 0.1 s from t = 1.0
        log.record(1.0 + j / 10, 100 * j)
    assert log.sent_by(1.25) - log.sent_by(1.05) == 200  # chunks started at 1.1 and 1.2
    assert log.sent_by(0.5) == 0 and log.sent_by(99.0) == 900
    assert log.covers(1.0, 1.9) and not log.covers(0.9, 1.5) and not log.covers(1.2, 2.5)


def test_sample_pairs_never_let_a_control_click_and_split_the_phases() -> None:
    n = 50
    seed = Interactions(np.array([f"u{j}" for j in range(n)]), np.array(["i"] * n),
                        np.ones(n, np.float32), np.arange(n, dtype=np.int64))
    idle, load = sample_pairs(seed, 120, 40)
    assert len(idle) == 120 and len(load) == 40
    clickers = {u for u, _ in idle + load}
    controls = {c for _, c in idle + load}
    assert not clickers & controls and len(controls) == n // 5
    assert not {u for u, _ in idle} & {u for u, _ in load}
    assert idle[0][0] == "u49"  # most recent user first


@pytest.mark.parametrize("module", ["scripts.bench_e2e", "scripts.tune"])
def test_docstring_examples_hold(module: str) -> None:
    """``scripts/`` is not in the doctest paths of ``make test``; run these here."""
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0

