"""The one supervisor base of the harness, on small real processes (no shared stack).

Each test supervises ``python -m http.server`` (or a process that fails) on a free port
under ``tmp_path``, so PID files and logs are its own.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from devstack.pidfiles import alive
from devstack.processes import free_port
from devstack.supervisor import Service, StackError, Supervisor, print_status


def _http_check(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
        pass


def _http_service(root: Path, name: str, port: int) -> Service:
    return Service(name, f"http://127.0.0.1:{port}",
                   lambda: [sys.executable, "-m", "http.server", str(port),
                            "--bind", "127.0.0.1"],
                   lambda: _http_check(port), "http.server", root / "logs" / f"{name}.log",
                   root / "run" / f"{name}.pid", [("tcp", port)], cwd=root,
                   start_timeout_s=30, stop_timeout_s=5)


def test_up_status_down_of_what_it_started(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    sup = Supervisor(tmp_path, [_http_service(tmp_path, f"web{i}", p)
                                for i, p in enumerate(ports)])
    try:
        assert sup.up() == ["web0", "web1"]
        rows = sup.status()
        assert [r["service"] for r in rows] == ["web0", "web1"]
        assert all(r["answers"] for r in rows), rows
        pids = [r["managed_pid"] for r in rows]
        assert all(isinstance(p, int) and alive(p) for p in pids)
        assert (tmp_path / "run" / "web0.pid").read_text() == str(pids[0])
        assert "starting:" in sup.log_since_start("web0")
        assert sup.up() == []  # idempotent: both answer already
        assert sup.down(["web1"]) == ["web1"]
        assert [r["answers"] for r in sup.status()] == [True, False]
    finally:
        stopped = sup.down()
    assert stopped == ["web0"]
    assert not any(alive(int(str(p))) for p in pids)
    assert sup.down() == []
    assert not (tmp_path / "run" / "web0.pid").exists()


def test_an_answering_service_started_elsewhere_is_reused_not_owned(tmp_path: Path) -> None:
    port = free_port()
    mine = Supervisor(tmp_path / "a", [_http_service(tmp_path / "a", "web", port)])
    other = Supervisor(tmp_path / "b", [_http_service(tmp_path / "b", "web", port)])
    try:
        mine.up()
        assert other.up() == []  # reused
        assert other.status()[0]["answers"] and other.status()[0]["managed_pid"] is None
        assert other.down() == []  # never stops what it did not start
        assert mine.status()[0]["answers"]
    finally:
        mine.down()


def test_a_busy_service_that_answers_late_is_reused_not_a_conflict(tmp_path: Path) -> None:
    """A running service that misses the first check (busy, e.g. under load) is reused."""
    port = free_port()
    mine = Supervisor(tmp_path / "a", [_http_service(tmp_path / "a", "web", port)])
    late = _http_service(tmp_path / "b", "web", port)
    misses = [2]

    def slow_check() -> None:
        if misses[0]:
            misses[0] -= 1
            raise TimeoutError("busy")
        _http_check(port)

    other = Supervisor(tmp_path / "b", [dataclasses.replace(late, check=slow_check)])
    try:
        mine.up()
        assert other.up() == [] and misses == [0]  # reused after the late answer
        assert other.status()[0]["managed_pid"] is None
    finally:
        mine.down()


def test_without_reuse_only_its_own_pid_counts(tmp_path: Path) -> None:
    """The apps' rule: an answering port that is not ours is a conflict, not a reuse."""

    class Apps(Supervisor):
        reuse_answering = False

    port = free_port()
    mine = Supervisor(tmp_path / "a", [_http_service(tmp_path / "a", "web", port)])
    apps = Apps(tmp_path / "b", [_http_service(tmp_path / "b", "web", port)])
    try:
        mine.up()
        with pytest.raises(StackError, match=f"tcp 127.0.0.1:{port} is taken"):
            apps.up()
    finally:
        mine.down()


def test_port_taken_by_something_else_is_named(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        sup = Supervisor(tmp_path, [_http_service(tmp_path, "web", port)])
        with pytest.raises(StackError) as err:
            sup.up()
    message = str(err.value)
    assert "web" in message and str(port) in message and "web.log" in message
    assert not (tmp_path / "run" / "web.pid").exists()


def test_a_process_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    svc = Service("broken", "tcp://127.0.0.1:1",
                  lambda: [sys.executable, "-c", "print('no config here'); raise SystemExit(3)"],
                  lambda: _http_check(1), "-c", tmp_path / "logs" / "broken.log",
                  tmp_path / "run" / "broken.pid", cwd=tmp_path)
    sup = Supervisor(tmp_path, [svc])
    with pytest.raises(StackError) as err:
        sup.up()
    assert "exited with code 3" in str(err.value) and "no config here" in str(err.value)
    assert not svc.pid_file.exists()


def test_before_start_hook_runs_only_for_services_it_starts(tmp_path: Path) -> None:
    seen: list[str] = []

    class Hooked(Supervisor):
        def before_start(self, service: Service) -> None:
            seen.append(service.name)

    sup = Hooked(tmp_path, [_http_service(tmp_path, "web", free_port())])
    try:
        sup.up()
        sup.up()
    finally:
        sup.down()
    assert seen == ["web"]


def test_print_status_is_one_table_for_every_supervisor() -> None:
    rows: list[dict[str, object]] = [
        {"service": "kafka", "url": "kafka://127.0.0.1:9092", "answers": True,
         "managed_pid": None, "log": "/x/kafka.log"},
        {"service": "graphite-web", "url": "http://127.0.0.1:8085", "answers": False,
         "managed_pid": 42, "log": "/x/graphite-web.log"}]
    out = io.StringIO()
    assert print_status(rows, file=out) is False
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["kafka", "up", "kafka://127.0.0.1:9092", "external",
                                "log", "/x/kafka.log"]
    assert lines[1].split() == ["graphite-web", "DOWN", "http://127.0.0.1:8085", "pid", "42",
                                "log", "/x/graphite-web.log"]
    assert print_status(rows[:1], file=io.StringIO()) is True
