"""Fault drills in a bounded form (the same code as ``python -m scripts.drill``)."""

from __future__ import annotations

import pytest

from common.settings import Settings
from scripts.drill import run_drill

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_sigkill_loses_and_doubles_nothing(stack: Settings) -> None:
    result = run_drill("worker-kill", stack, events=4_000)
    assert result["lost"] == 0 and result["double_counted"] == 0
    assert 0 < result["applied_at_kill"] <= 4_000


def test_malformed_events_all_dead_lettered_worker_alive(stack: Settings) -> None:
    result = run_drill("malformed", stack, bad=1_000, good=2_000)
    assert result["dead_letters"] == 1_000 and result["valid_applied"] == 2_000
    assert result["worker_alive"]


@pytest.mark.parametrize("which", ["faiss", "mongodb"])
def test_dependency_restart_under_load_has_no_5xx(stack: Settings, which: str) -> None:
    result = run_drill(f"{which}-restart", stack)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["errors_5xx"] == 0
    assert result["requests_while_down"] > 0
    served = result["fallbacks_while_down"] + result["personalized_while_down"]
    assert served == result["requests_while_down"]
    if which == "faiss":
        assert result["fallbacks_while_down"] > 0
    assert result["recovery_s"] is not None


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
    # Smaller than the CLI default (20,000 events): the ratio, not the speed, is checked
    # by the drill itself (it raises below 0.8); here its figures must add up.
    result = run_drill("poison-rate", stack, events=5_000, users=500)
    assert result["malformed_per_run"] == 5
    assert result["poison_events_per_s"] > 0 and result["ratio"] >= 0.8
