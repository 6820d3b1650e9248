"""The learning benchmark runs end to end on a small table and prints its JSON keys."""

from __future__ import annotations

import json

import pytest

from scripts import bench_learning


def test_bench_learning_prints_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    bench_learning.main(["--users", "3000", "--items", "500", "--events", "20000",
                         "--seconds", "0.5"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for bs in (1, 64, 256):
        rate = result[f"events_per_s_batch{bs}"]
        assert result[f"events_per_s_batch{bs}_min"] <= rate <= result[
            f"events_per_s_batch{bs}_max"]
        assert rate > 0 and result[f"events_per_cpu_s_batch{bs}"] > 0
    assert result["events_per_s_batch256"] > result["events_per_s_batch1"]
    assert result["growth_s"] >= 0 and result["peak_rss_mb"] > 0  # growth of 300 rows: ~0 s
