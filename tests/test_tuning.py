"""The committed tuning record (``ops/tuning/movielens-100k.json``, written by
``python -m scripts.tune``) and the code agree.

A default in the code that the record did not choose, or a record made on other splits
than today's validation splits, fails here: rerun ``scripts.tune`` and commit both.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from scripts import tune
from tests.test_eval_regression import PINNED

RECORDS: dict[str, dict[str, Any]] = {
    name: json.loads(path.read_text()) for name, (path, _) in tune.RECORDS.items()}
GRIDS = {g.name: g for _, grids in tune.RECORDS.values() for g in grids}
CHOICES = [c for record in RECORDS.values() for c in record["choices"]]


@pytest.mark.parametrize("choice", CHOICES,
                         ids=[f"{c['grid']}:{c['axis']}" for c in CHOICES])
def test_code_defaults_are_the_recorded_choices(choice: dict[str, Any]) -> None:
    assert tune.default_value(GRIDS[choice["grid"]], choice["axis"]) == choice["choice"]


@pytest.mark.parametrize("name", sorted(tune.RECORDS))
def test_every_tuning_run_used_a_validation_split(name: str) -> None:
    """The digests of the runs are those of the validation splits pinned in
    ``test_eval_regression`` (carved from the test run's training part), never a test
    split's; every grid of the record was run."""
    record = RECORDS[name]
    for run in record["runs"]:
        protocol = run["grid"].split("/")[0]
        assert run["split_sha256"] == PINNED[(protocol, "validation")]["split_sha256"], run
    assert {c["grid"] for c in record["choices"]} == {g.name for g in tune.RECORDS[name][1]}


def test_the_ranking_defaults_are_the_recorded_choice() -> None:
    """``ops/tuning/ranker.json`` (``python -m scripts.tune_ranker``): the rule picks the
    recorded choice from the recorded runs, and the code's defaults are that run's."""
    from pathlib import Path

    from ranking.offline import SourceSizes
    from ranking.ranker import RankerParams
    from scripts import tune_ranker

    record = json.loads(Path(tune_ranker.RECORD).read_text())
    assert tune_ranker.choose(record["runs"]) == record["choice"]
    (chosen,) = [r for r in record["runs"] if r["config"] == record["choice"]]
    assert SourceSizes(**chosen["sizes"]) == SourceSizes()
    assert RankerParams(**chosen["params"]) == RankerParams()
