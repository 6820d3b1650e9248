"""The in-process pipeline benchmark runs on the real Redis and cleans up after itself."""

from __future__ import annotations

import json

import pytest

from common.clients import redis_client
from common.settings import Settings
from scripts import bench_pipeline


@pytest.mark.integration
def test_bench_pipeline_applies_every_event_and_leaves_no_keys(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    bench_pipeline.main(["--users", "40", "--batches", "3", "--batch", "120"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["events"], result["users"], result["model"]) == (360, 40, "session")
    assert result["events_per_s"] > 0
    # the split adds up: learning and writing are parts of the pipeline's time
    assert 0 < result["learn_s"] + result["write_s"] <= result["process_s"]
    r = redis_client(settings)
    try:
        assert not list(r.scan_iter(match=f"{bench_pipeline.PREFIX}*"))
    finally:
        r.close()
