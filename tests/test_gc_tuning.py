"""The garbage-collector settings of the long-running processes (common/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from common.gc_tuning import freeze_startup_heap, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_tune_gc_sets_generation_0_and_zero_keeps_the_defaults(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)


def test_the_startup_heap_is_frozen_out_of_later_collections(restore_gc: None) -> None:
    gc.unfreeze()
    heap = [[j] for j in range(10_000)]  # long-lived, built "at start-up"
    freeze_startup_heap()
    assert gc.get_freeze_count() >= len(heap)
