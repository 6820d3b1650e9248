"""Child processes for tests and benchmarks (the worker, a service), a sync producer,
free ports and polling helpers.

The worker runs as a child process configured only through ``RECSYS_*`` variables
(exactly as in production), logs to a file under the test's temporary folder, and can be
stopped cleanly (SIGTERM) or killed (SIGKILL) to test recovery. A
:class:`ServiceProcess` is ``python -m scripts.serve faiss|api`` waited for on ``/health``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer

from common.settings import PROJECT_ROOT, Settings

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
              interval_s: float = 0.2) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def seconds_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float,
                  start: float | None = None) -> float:
    """Seconds from ``start`` (a ``time.perf_counter()``; now by default) until
    ``predicate()`` holds, polling every ``interval_s``; ``inf`` if it still does not
    after ``timeout_s`` (latency benchmarks count that as a timeout, not a failure)."""
    t0 = time.perf_counter() if start is None else start
    while time.perf_counter() - t0 < timeout_s:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(interval_s)
    return float("inf")


class ChildProcess:
    """A project process started with ``python -m module`` and a settings environment."""

    ready_marker: str = ""

    def __init__(self, settings: Settings, log_path: Path, module: str,
                 args: list[str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.module = module
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, timeout_s: float = 90.0) -> ChildProcess:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], cwd=PROJECT_ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, timeout_s, f"{self.module} to be ready (log {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n"
                               + self.log_tail())
        return self.ready_marker in self.log_text()

    def log_text(self) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit or checkpoint."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ChildProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess(ChildProcess):
    ready_marker = "worker runtime ready"

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(settings, log_path, "streams.worker")


class SyncProducer:
    """A long-lived Kafka producer on its own event-loop thread, for synchronous scripts.

    Benchmarks time single sends; building a producer per send would cost ~100 ms.
    """

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
            await producer.start()
            return producer

        self.producer: AIOKafkaProducer = self._call(make())

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def send(self, topic: str, key: str, value: bytes) -> None:
        self._call(self.producer.send_and_wait(topic, value, key=key.encode()))

    def close(self) -> None:
        self._call(self.producer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class ServiceProcess(ChildProcess):
    """``python -m scripts.serve faiss|api ...`` as a child process; ready once ``/health``
    answers HTTP (a 503 counts: the FAISS service answers it before an index is loaded).
    Stopping signals the process group, so the API's pre-forked workers stop too."""

    def __init__(self, args: list[str], port: int, settings: Settings,
                 log_path: Path | None = None, ready_timeout_s: float = 60.0,
                 health_path: str = "/health") -> None:
        super().__init__(settings, log_path or Path(os.devnull), "scripts.serve",
                         [*args, "--port", str(port)])
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self.health_path = health_path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float | None = None) -> ServiceProcess:
        try:
            super().start(self.ready_timeout_s if timeout_s is None else timeout_s)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{self.args[0]} did not answer on {self.url}: {exc}") from exc
        return self

    def _ready(self) -> bool:
        super()._ready()  # raises if the process exited
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answers HTTP (e.g. 503 before an index is loaded)
        except OSError:
            return False

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.proc is None else self
