"""Pinned figures of ``scripts.evaluate`` and the rule that validation never sees the test.

Why the figures may be pinned: the popularity baseline has no randomness (it counts),
every split is seeded, and the data is SHA-256-verified on fetch (``datasets.movielens``).
So these numbers and split digests depend only on the protocol definitions: a change to
one (user order, the negatives' seed, a split fraction, the tie rule, the prequential
bootstrap) fails here and has to be a deliberate edit of this file and of the README's
quality table, which quotes the same figures. The digests hash the split contents as
text (``models.evaluation.digest``); a numpy change of float formatting would move them
without a protocol change, which this test would also (rightly) ask a human to check.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.settings import Settings
from datasets import movielens
from experiments.evaluate import PREQUENTIAL_BOOTSTRAP, Splits
from models.evaluation import interactions_digest
from scripts import evaluate

pytestmark = pytest.mark.slow

PINNED: dict[tuple[str, str], dict[str, float | str]] = {
    ("loo", "test"): {"hr@10": 0.3234, "ndcg@10": 0.1676, "split_sha256": "5e8f3d884ecbef03"},
    ("full", "test"): {"precision@10": 0.2348, "recall@10": 0.1141, "ndcg@10": 0.2558,
                       "map@10": 0.14, "split_sha256": "20b521a08af59204"},
    ("prequential", "test"): {"recall@10": 0.0757, "split_sha256": "61ca35722cd4c7cf"},
    ("loo", "validation"): {"hr@10": 0.4242, "ndcg@10": 0.2232,
                            "split_sha256": "d46fcf8807fdc557"},
    ("full", "validation"): {"precision@10": 0.1391, "recall@10": 0.0959,
                             "ndcg@10": 0.1568, "map@10": 0.069,
                             "split_sha256": "e28b48ee351dc8ee"},
    ("prequential", "validation"): {"recall@10": 0.0775, "split_sha256": "66848ca3ead7afeb"},
    ("responsiveness", "validation"): {"genre_share_before": 0.0382,
                                       "genre_share_after": 0.0031, "users": 131,
                                       "split_sha256": "3314ef998794579d"},
}


@pytest.mark.parametrize(("protocol", "split"), list(PINNED))
def test_popularity_figures_and_split_digests_are_pinned(protocol: str, split: str) -> None:
    out = evaluate.run(evaluate.parse_args(["--protocol", protocol, "--model", "popularity",
                                            "--split", split]))
    got = {k: out[k] for k in PINNED[(protocol, split)]}
    assert got == PINNED[(protocol, split)]


@pytest.fixture(scope="module")
def splits(settings: Settings) -> Splits:
    return Splits(movielens.load(settings.cache_dir).interactions)


def pairs(users: np.ndarray, items: np.ndarray) -> set[tuple[str, str]]:
    return set(zip(users.tolist(), items.tolist(), strict=True))


def test_prequential_validation_is_exactly_the_test_bootstrap(splits: Splits) -> None:
    """The test run learns the first 20% before scoring; validation uses only that."""
    log = splits.prequential_test
    n_boot = int(len(log) * PREQUENTIAL_BOOTSTRAP)
    assert len(splits.prequential_validation) == n_boot == 20_000
    assert (interactions_digest(splits.prequential_validation)
            == interactions_digest(log.take(slice(0, n_boot))))


def test_loo_validation_is_carved_from_the_test_training_part(splits: Splits) -> None:
    test, val = splits.loo_test, splits.loo_validation
    train = pairs(test.train.users, test.train.items)
    held = pairs(np.asarray(test.users), np.asarray(test.held_out))
    val_seen = pairs(val.train.users, val.train.items) | pairs(np.asarray(val.users),
                                                               np.asarray(val.held_out))
    assert val_seen <= train and not val_seen & held
    assert len(val.train) == len(test.train) - len(val.users)


def test_full_validation_is_carved_from_the_test_training_part(splits: Splits) -> None:
    test, val = splits.full_test, splits.full_validation
    scored = {(u, i) for u, items in test.test.items() for i in items}
    val_seen = pairs(val.train.users, val.train.items) | {
        (u, i) for u, items in val.test.items() for i in items}
    assert val_seen == pairs(test.train.users, test.train.items)
    assert not val_seen & scored
