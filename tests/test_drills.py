"""Fault drills in a bounded form (the same code as ``python -m scripts.drill``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from devstack.drills.system import run_drill
from devstack.processes import free_port
from devstack.stack import StackManager

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_sigkill_loses_and_doubles_nothing(stack: Settings) -> None:
    result = run_drill("worker-kill", stack, events=4_000)
    assert result["lost"] == 0 and result["double_counted"] == 0
    assert 0 < result["applied_at_kill"] <= 4_000


def test_malformed_events_all_dead_lettered_worker_alive(stack: Settings) -> None:
    result = run_drill("malformed", stack, bad=1_000, good=2_000)
    assert result["dead_letters"] == 1_000 and result["valid_applied"] == 2_000
    assert result["worker_alive"]


def _assert_no_5xx_and_recovered(result: dict[str, Any]) -> None:
    assert "skipped" not in result, result  # the drill must run, never pass by skipping
    assert result["errors_5xx"] == 0
    assert result["requests_while_down"] > 0
    served = result["fallbacks_while_down"] + result["personalized_while_down"]
    assert served == result["requests_while_down"]
    assert result["recovery_s"] is not None


def test_faiss_restart_under_load_has_no_5xx(stack: Settings) -> None:
    result = run_drill("faiss-restart", stack)
    _assert_no_5xx_and_recovered(result)
    assert result["fallbacks_while_down"] > 0  # no candidates without FAISS: popular


@pytest.fixture
def private_mongo(stack: Settings, tmp_path: Path) -> Iterator[StackManager]:
    """The session's settings with MongoDB moved to a SecantusDB of this test's own.

    The MongoDB on 27017 is shared with other test runs and must never be restarted.
    ``local_dir`` points at ``tmp_path``, so ``devstack.stack`` (which the drill calls)
    finds no MongoDB answering there, starts one on a free port with its PID file under
    ``tmp_path``, and the drill may stop and restart exactly that one. Broker and Redis
    still answer on their shared ports and are reused, never started or stopped here.
    """
    port = free_port()
    settings = dataclasses.replace(
        stack, mongo_uri=f"mongodb://127.0.0.1:{port}/?journal=true", local_dir=tmp_path)
    manager = StackManager(settings)
    manager.services = [s for s in manager.services if s.name == "mongodb"]
    manager.up()
    try:
        yield manager
    finally:
        manager.down()


def test_mongodb_restart_under_load_has_no_5xx(private_mongo: StackManager) -> None:
    pid_before = private_mongo.status()[0]["managed_pid"]
    result = run_drill("mongodb-restart", private_mongo.settings)
    _assert_no_5xx_and_recovered(result)
    pid_after = private_mongo.status()[0]["managed_pid"]
    assert pid_before is not None and pid_after not in (None, pid_before)  # restarted


def test_admin_endpoints_refuse_bad_keys(stack: Settings) -> None:
    result = run_drill("admin-keys", stack)
    assert result["missing_key_status"] == 401 and result["wrong_key_status"] == 401


def test_oversized_records_are_dead_lettered_and_consumers_go_on(stack: Settings) -> None:
    result = run_drill("oversize", stack)
    assert result["consumer_alive"] and result["dead_lettered"] == result["oversize_sent"] == 3
    assert result["truncated"] == 3
    assert result["largest_letter_bytes"] <= stack.dead_letter_max_payload_bytes
    assert result["valid_after_poison_applied"] == 2


def test_a_recreated_topic_under_a_running_worker_loses_no_click(stack: Settings) -> None:
    result = run_drill("offset-reset", stack, users=10)
    assert result["applied"] == result["sent"] == 11 and result["worker_alive"]


def test_malformed_bytes_do_not_send_batches_down_the_slow_path(stack: Settings) -> None:
    # Smaller than the CLI default (20,000 events), and no timing is asserted (the ratio
    # is the command line's figure): no batch may take the slow split-and-retry path.
    result = run_drill("poison-rate", stack, events=5_000, users=500, min_ratio=None)
    assert result["malformed_per_run"] == 5 and result["batch_splits"] == 0
    assert result["poison_events_per_s"] > 0
