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

RECORD: dict[str, Any] = json.loads(tune.OUT.read_text())
GRIDS = {g.name: g for g in tune.GRIDS}


@pytest.mark.parametrize("choice", RECORD["choices"],
                         ids=[f"{c['grid']}:{c['axis']}" for c in RECORD["choices"]])
def test_code_defaults_are_the_recorded_choices(choice: dict[str, Any]) -> None:
    assert tune.default_value(GRIDS[choice["grid"]], choice["axis"]) == choice["choice"]


def test_every_tuning_run_used_a_validation_split() -> None:
    """The digests of the runs are those of the validation splits pinned in
    ``test_eval_regression`` (carved from the test run's training part), never a test
    split's."""
    for run in RECORD["runs"]:
        protocol = run["grid"].split("/")[0]
        assert run["split_sha256"] == PINNED[(protocol, "validation")]["split_sha256"], run
    assert {c["grid"] for c in RECORD["choices"]} == set(GRIDS)
