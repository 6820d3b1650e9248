"""The learning benchmark runs end to end on a small table; its JSON says what it did."""

from __future__ import annotations

import json

import pytest

from scripts import bench_learning


@pytest.mark.parametrize("model", ["gmf", "session"])
def test_bench_learning_prints_every_key(model: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bench_learning.main(["--users", "3000", "--items", "500", "--events", "20000",
                         "--seconds", "0.5", "--model", model])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == model
    for bs in (1, 64, 256):
        rate = result[f"events_per_s_batch{bs}"]
        assert result[f"events_per_s_batch{bs}_min"] <= rate <= result[
            f"events_per_s_batch{bs}_max"]
        assert rate > 0 and result[f"events_per_cpu_s_batch{bs}"] > 0
    assert result["events_per_s_batch256"] > result["events_per_s_batch1"]
    # the growth step really grew the tables: 3,000 users registered with tables sized
    # exactly, then 10% more, so the capacity had to grow past the new user count
    assert result["growth_users"] == [3000, 3300]
    cap_before, cap_after = result["growth_capacity"]
    assert cap_before == 3000 and cap_after >= 3300
    # growth_s is a timing (no assertion on its value: tests never time things), but it
    # must be the time of that step, printed as a number
    assert isinstance(result["growth_s"], float) and result["peak_rss_mb"] > 0
