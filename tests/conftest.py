"""Shared fixtures.

Unit tests need nothing running. Tests marked ``integration`` use the real local stack
(Tansu broker, SecantusDB, Redis): the ``stack`` fixture brings it up once per session
(idempotent, like ``python -m scripts.stack up``) and the other fixtures give each test
session its own MongoDB database, Redis key prefix and topic names, so runs never see
each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from common.settings import Settings


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the numba learning kernels once, before any test starts a worker process:
    on a clean checkout that takes ~10 s, and the workers then load them from the cache
    instead of compiling while a test waits for them."""
    from models import kernels

    kernels.warm_up()


@pytest.fixture(scope="session")
def run_id() -> str:
    """A short id unique to this test session, used to namespace shared resources."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def settings(run_id: str) -> Settings:
    """Settings from the environment, namespaced for this test session."""
    base = Settings.from_env()
    return Settings.from_env(
        mongo_db=f"recsys_test_{run_id.replace('-', '_')}",
        redis_prefix=f"recsys-test-{run_id}:",
        topic_interactions=f"test-{run_id}-interactions",
        topic_items=f"test-{run_id}-items",
        topic_dead_letter=f"test-{run_id}-dead-letter",
        statsd_prefix=f"recsys-test-{run_id}",
        local_dir=base.local_dir,
    )


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """Make sure broker, MongoDB and Redis answer (starting them if needed)."""
    from devstack.stack import StackManager

    StackManager(settings).up()
    return settings


@pytest.fixture
def redis_client(stack: Settings) -> Iterator[object]:
    from common.clients import redis_client as make

    client = make(stack)
    yield client
    keys = list(client.scan_iter(match=f"{stack.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def mongo_db(stack: Settings) -> Iterator[object]:
    from common.clients import mongo_client

    client = mongo_client(stack)
    db = client[stack.mongo_db]
    yield db
    client.drop_database(stack.mongo_db)
    client.close()
