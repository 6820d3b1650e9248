"""The project's own processes: FAISS service, API, worker.

Run by ``python -m scripts.apps up|status|down [names]`` (``up`` is idempotent, each
process detached; ``down`` stops only what ``up`` started). The infrastructure (broker,
MongoDB, Redis) is :mod:`devstack.stack`'s job; this module runs what sits on top of
it, the way the demo and an operator on one machine would. Logs go to
``.local/logs/<name>.log``, PID files to ``.local/run/<name>.pid``.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common.settings import PROJECT_ROOT, Settings
from devstack.supervisor import Service, StackError, Supervisor

WORKER_READY = "worker runtime ready"


def _http_answers(url: str) -> None:
    """Raises unless ``url`` answers HTTP (a 503 counts: the index may be empty)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500 or exc.code == 503:
            return
        raise


class AppManager(Supervisor):
    """Runs the FAISS service, the API and the worker as detached processes.

    Only processes this manager's PID files name count as up (``reuse_answering`` off).
    """

    reuse_answering = False

    def __init__(self, settings: Settings, api_workers: int = 2, faiss_kind: str = "flat",
                 dim: int | None = None) -> None:
        from streams.model_files import model_dim

        self.settings = settings
        super().__init__(Path(settings.local_dir), [])
        dim = dim or model_dim(settings)
        py = sys.executable
        api = f"http://127.0.0.1:{settings.api_port}"

        def env() -> dict[str, str]:
            return {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}

        def app(name: str, module: str, args: list[str], url: str, check: Callable[[], None],
                ports: list[tuple[str, int]], start_timeout_s: float = 90.0) -> Service:
            # what our process's command line contains: ``-m <module> [<service>]``
            hint = "\x00".join([module, *args[:1]]) if module == "scripts.serve" else module
            return Service(name, url, lambda: [py, "-m", module, *args], check, hint,
                           self.logs / f"{name}.log", self.run / f"{name}.pid", ports,
                           env=env, cwd=PROJECT_ROOT, start_timeout_s=start_timeout_s,
                           stop_timeout_s=20.0)

        self.services = [
            app("faiss", "scripts.serve", ["faiss", "--port", str(settings.faiss_port),
                                           "--kind", faiss_kind, "--dim", str(dim)],
                settings.faiss_url, lambda: _http_answers(settings.faiss_url + "/health"),
                [("tcp", settings.faiss_port)]),
            app("api", "scripts.serve", ["api", "--port", str(settings.api_port),
                                         "--workers", str(api_workers)],
                api, lambda: _http_answers(api + "/health"), [("tcp", settings.api_port)]),
            app("worker", "streams.worker", [], settings.kafka_url, self._worker_ready, [],
                120.0),
        ]

    def _worker_ready(self) -> None:
        """The worker has no port: ours runs and has logged that its runtime is ready."""
        if self.pid("worker") is None:
            raise StackError("worker: not running")
        if WORKER_READY not in self.log_since_start("worker"):
            raise StackError(f"worker: no {WORKER_READY!r} in its log yet")
