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
