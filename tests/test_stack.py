"""The stack manager against real processes (its own ports, so the shared stack is untouched)."""

import socket
from pathlib import Path

import pytest

from common.settings import Settings
from devstack.pidfiles import alive
from devstack.processes import free_port, seconds_until
from devstack.stack import StackError, StackManager

pytestmark = pytest.mark.integration


def test_shared_stack_answers(stack: Settings) -> None:
    rows = StackManager(stack).status()
    assert {r["service"] for r in rows} == {"kafka", "mongodb", "redis"}
    assert all(r["answers"] for r in rows), rows


def test_up_is_idempotent(stack: Settings) -> None:
    manager = StackManager(stack)
    before = {r["service"]: r["managed_pid"] for r in manager.status()}
    manager.up()  # everything answers already: nothing new is started
    after = {r["service"]: r["managed_pid"] for r in manager.status()}
    assert before == after


def test_private_stack_lifecycle(tmp_path: Path) -> None:
    """up starts all three on fresh ports, status sees them, down stops exactly them."""
    s = Settings.from_env(
        kafka_url=f"kafka://127.0.0.1:{free_port()}",
        mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?journal=true",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        local_dir=tmp_path,
    )
    manager = StackManager(s)
    try:
        manager.up()
        rows = manager.status()
        assert all(r["answers"] for r in rows), rows
        pids = [r["managed_pid"] for r in rows]
        assert all(isinstance(p, int) for p in pids)
        assert (tmp_path / "logs" / "kafka.log").exists()
    finally:
        stopped = manager.down()
    assert sorted(stopped) == ["kafka", "mongodb", "redis"]
    assert not any(alive(p) for p in pids)
    assert not any(r["answers"] for r in manager.status())
    assert manager.down() == []  # second down: nothing left to stop


def test_port_taken_by_something_else_is_named(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s = Settings.from_env(redis_url=f"redis://127.0.0.1:{port}/0", local_dir=tmp_path)
        manager = StackManager(s)
        manager.services = [svc for svc in manager.services if svc.name == "redis"]
        with pytest.raises(StackError) as err:
            manager.up()
    message = str(err.value)
    assert "redis" in message and str(port) in message and "redis.log" in message


def test_seconds_until_measures_from_start_and_times_out_as_inf() -> None:
    calls = []

    def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    took = seconds_until(third_call, timeout_s=5, interval_s=0.01)
    assert len(calls) == 3 and 0.015 <= took < 5
    assert seconds_until(lambda: False, timeout_s=0.05, interval_s=0.01) == float("inf")
