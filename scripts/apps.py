"""Start, stop and inspect the project's own processes: FAISS service, API, worker.

    python -m scripts.apps up        # idempotent; each process detached, PID file + log
    python -m scripts.apps status
    python -m scripts.apps down      # stops only what `up` started

The infrastructure (broker, MongoDB, Redis) is ``scripts.stack``'s job; this module runs
what sits on top of it, the way the demo and an operator on one machine would. Logs go
to ``.local/logs/<name>.log``, PID files to ``.local/run/<name>.pid``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.settings import PROJECT_ROOT, Settings
from scripts.pidfiles import pid_if_ours, stop_if_ours
from scripts.pidfiles import tail as _tail
from scripts.stack import StackError


@dataclass
class App:
    name: str
    command: list[str]
    ready: Callable[[], bool]
    url: str
    timeout_s: float = 90.0

    @property
    def hint(self) -> str:
        """What our process's command line contains (``python -m <module> [<service>]``)."""
        return "\x00".join(self.command[2:4]) if "scripts.serve" in self.command \
            else self.command[2]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500 or exc.code == 503  # answering (index may be empty)
    except OSError:
        return False


class AppManager:
    """Runs the FAISS service, the API and the worker as detached processes."""

    def __init__(self, settings: Settings, api_workers: int = 2, faiss_kind: str = "flat",
                 dim: int | None = None) -> None:
        from streams.model_files import model_dim

        self.settings = settings
        dim = dim or model_dim(settings)
        self.logs = Path(settings.local_dir) / "logs"
        self.run = Path(settings.local_dir) / "run"
        py = sys.executable
        api = f"http://127.0.0.1:{settings.api_port}"
        self.apps = [
            App("faiss", [py, "-m", "scripts.serve", "faiss", "--port", str(settings.faiss_port),
                          "--kind", faiss_kind, "--dim", str(dim)],
                lambda: _http_ok(settings.faiss_url + "/health"), settings.faiss_url),
            App("api", [py, "-m", "scripts.serve", "api", "--port", str(settings.api_port),
                        "--workers", str(api_workers)],
                lambda: _http_ok(api + "/health"), api),
            App("worker", [py, "-m", "streams.worker"],
                lambda: "worker runtime ready" in self._log_since_start("worker"),
                settings.kafka_url, 120.0),
        ]
        self._offsets: dict[str, int] = {}

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def _log_since_start(self, name: str) -> str:
        try:
            with self._log(name).open("rb") as fh:
                fh.seek(self._offsets.get(name, 0))
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def pid(self, name: str) -> int | None:
        """PID of the app ``up`` started, while that very process still runs."""
        app = next(a for a in self.apps if a.name == name)
        return pid_if_ours(self._pid_file(name), app.hint)

    def up(self, names: list[str] | None = None) -> None:
        """Start the named apps (all by default) unless already running; wait until ready."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        for app in self.apps:
            if names and app.name not in names:
                continue
            if self.pid(app.name) is not None:
                continue
            log = self._log(app.name)
            self._offsets[app.name] = log.stat().st_size if log.exists() else 0
            with log.open("ab") as out:
                proc = subprocess.Popen(app.command, cwd=PROJECT_ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            self._pid_file(app.name).write_text(str(proc.pid))
            deadline = time.monotonic() + app.timeout_s
            while not app.ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.down([app.name])
                    raise StackError(f"{app.name} did not become ready (exit code "
                                     f"{proc.poll()}); log {log}:\n{_tail(log)}")
                time.sleep(0.2)

    def down(self, names: list[str] | None = None) -> list[str]:
        """SIGTERM each started app's process group (SIGKILL after 20 s)."""
        return [app.name for app in reversed(self.apps)
                if (not names or app.name in names)
                and stop_if_ours(self._pid_file(app.name), app.hint, app.name, group=True,
                                 timeout_s=20)]

    def status(self) -> list[dict[str, object]]:
        return [{"app": a.name, "pid": self.pid(a.name), "ready": a.ready()
                 if a.name != "worker" else self.pid(a.name) is not None,
                 "url": a.url, "log": str(self._log(a.name))} for a in self.apps]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the FAISS service, API and worker locally.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("names", nargs="*", help="faiss, api, worker (default: all)")
    args = p.parse_args(argv)
    manager = AppManager(Settings.from_env())
    try:
        if args.action == "up":
            manager.up(args.names or None)
        elif args.action == "down":
            stopped = manager.down(args.names or None)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing running"))
            return 0
    except StackError as exc:
        print(f"apps {args.action} failed: {exc}", file=sys.stderr)
        return 1
    for row in manager.status():
        state = "up" if row["pid"] else "DOWN"
        print(f"{row['app']:7} {state:5} {row['url']:40} log {row['log']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
