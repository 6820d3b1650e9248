"""The one supervisor of detached local processes: start, wait until ready, stop, status.

The local stack (:mod:`devstack.stack`), the metrics pipeline
(:mod:`devstack.metrics_stack`) and the project's own processes (:mod:`devstack.apps`)
are each a :class:`Supervisor` over a list of :class:`Service` descriptions; they differ
only in what they run and how they check it. Every process is started in its own
session, detached, with a log file and a PID file under ``settings.local_dir``;
``down`` stops only what a PID file names and :mod:`devstack.pidfiles` still finds ours.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from devstack.pidfiles import pid_if_ours, stop_if_ours, tail

log = logging.getLogger("devstack")


class StackError(RuntimeError):
    """A service could not be started or is not what we expected on its port."""


@dataclass
class Service:
    """One supervised process: how to start it, how to tell that it answers, where it logs."""

    name: str
    url: str
    command: Callable[[], list[str]]
    check: Callable[[], None]  # raises when the service does not answer
    hint: str  # substring of the command line of the process we started
    log_file: Path
    pid_file: Path
    ports: list[tuple[str, int]] = field(default_factory=list)  # ("tcp"|"udp", port)
    host: str = "127.0.0.1"
    env: Callable[[], dict[str, str]] | None = None  # None: this process's environment
    cwd: Path | None = None
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 15.0

    def answers(self) -> bool:
        try:
            self.check()
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not answer"
            return False

    def taken_ports(self) -> list[str]:
        """The service's ports that something already holds."""
        return [f"{proto} {self.host}:{port}" for proto, port in self.ports
                if port_taken(self.host, proto, port)]


def port_taken(host: str, proto: str, port: int) -> bool:
    """TCP: something accepts connections; UDP: the port cannot be bound."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":
            s.settimeout(0.3)
            return s.connect_ex((host, port)) == 0
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


class Supervisor:
    """Starts, stops and reports a list of :class:`Service`; safe to call repeatedly.

    ``reuse_answering``: a service that already answers counts as up even if someone
    else started it (infrastructure: a Redis already running is reused). Without it only
    a process this supervisor's PID file names counts (the project's own processes, whose
    health checks could otherwise be answered by a previous run's log).
    """

    reuse_answering: bool = True
    #: Before calling a taken port a conflict, how long its occupant may take to answer:
    #: a service of ours that is busy (e.g. graphite-web on a loaded machine) misses one
    #: short check but is not a stranger.
    busy_grace_s: float = 10.0

    def __init__(self, root: Path, services: list[Service]) -> None:
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.run = self.root / "run"
        self.services = services
        self._log_offsets: dict[str, int] = {}

    # --- hooks --------------------------------------------------------------------------
    def _answers_within(self, svc: Service) -> bool:
        """Whether ``svc`` answers at some point within :attr:`busy_grace_s`."""
        deadline = time.monotonic() + self.busy_grace_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if svc.answers():
                return True
        return False

    def before_start(self, service: Service) -> None:
        """Called before a service is spawned (e.g. to initialise its database)."""

    # --- lifecycle ----------------------------------------------------------------------
    def up(self, names: list[str] | None = None) -> list[str]:
        """Start the named services (all by default) that are not up; wait until each
        answers. Returns the names of those started."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        started = []
        for svc in self._selected(names):
            if not self.reuse_answering and self.pid(svc.name) is not None:
                continue
            if self.reuse_answering and svc.answers():
                log.info("%s: already answering at %s (reused)", svc.name, svc.url)
                continue
            taken = svc.taken_ports()
            if taken and self.reuse_answering and self._answers_within(svc):
                log.info("%s: answered late at %s (busy; reused)", svc.name, svc.url)
                continue
            if taken:
                raise StackError(
                    f"{svc.name}: {', '.join(taken)} is taken by something that does not "
                    f"answer as {svc.name}; stop it or point RECSYS_* at another port "
                    f"(log: {svc.log_file})")
            self.before_start(svc)
            proc = self._spawn(svc)
            self._wait_ready(svc, proc)
            log.info("%s: started (pid %d) at %s, log %s", svc.name, proc.pid, svc.url,
                     svc.log_file)
            started.append(svc.name)
        return started

    def _spawn(self, svc: Service) -> subprocess.Popen[bytes]:
        cmd = svc.command()
        self._log_offsets[svc.name] = svc.log_file.stat().st_size \
            if svc.log_file.exists() else 0
        with svc.log_file.open("ab") as out:
            out.write(f"\n--- {time.strftime('%F %T')} starting: {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=svc.cwd or self.root,
                                    env=svc.env() if svc.env else None)
        svc.pid_file.write_text(str(proc.pid))
        return proc

    def _wait_ready(self, svc: Service, proc: subprocess.Popen[bytes]) -> None:
        """Poll the check until it passes; on exit or timeout stop the process and raise."""
        deadline = time.monotonic() + svc.start_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                svc.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{svc.name}: exited with code {proc.returncode} while starting at "
                    f"{svc.url}; see {svc.log_file}:\n{tail(svc.log_file)}")
            try:
                svc.check()
                return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        self.down([svc.name])
        raise StackError(
            f"{svc.name}: not answering at {svc.url} after {svc.start_timeout_s:.0f}s "
            f"({last}); stopped it; see {svc.log_file}:\n{tail(svc.log_file)}")

    def down(self, names: list[str] | None = None) -> list[str]:
        """Stop the named services this supervisor started (PID files), in reverse order:
        SIGTERM to the process group, SIGKILL after the service's stop timeout."""
        return [svc.name for svc in reversed(self._selected(names))
                if stop_if_ours(svc.pid_file, svc.hint, svc.name, group=True,
                                timeout_s=svc.stop_timeout_s)]

    # --- inspection ---------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        """PID of the process ``up`` started, while that very process still runs."""
        svc = self._service(name)
        return pid_if_ours(svc.pid_file, svc.hint)

    def log_since_start(self, name: str) -> str:
        """The service's log from where it was when this supervisor last started it."""
        try:
            with self._service(name).log_file.open("rb") as fh:
                fh.seek(self._log_offsets.get(name, 0))
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> list[dict[str, object]]:
        """One row per service: name, URL, whether it answers, our PID (None: not ours)."""
        return [{"service": s.name, "url": s.url, "answers": s.answers(),
                 "managed_pid": self.pid(s.name), "log": str(s.log_file)}
                for s in self.services]

    def _selected(self, names: list[str] | None) -> list[Service]:
        return [s for s in self.services if not names or s.name in names]

    def _service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


def print_status(rows: list[dict[str, object]], file: TextIO | None = None) -> bool:
    """Print :meth:`Supervisor.status` rows as a table; True if every service answers."""
    width = max((len(str(r["service"])) for r in rows), default=0)
    url_width = max((len(str(r["url"])) for r in rows), default=0)
    for row in rows:
        owner = f"pid {row['managed_pid']}" if row["managed_pid"] \
            else "external" if row["answers"] else "-"
        state = "up" if row["answers"] else "DOWN"
        print(f"{row['service']!s:{width}} {state:5} {row['url']!s:{url_width}} {owner:14} "
              f"log {row['log']}", file=file or sys.stdout)
    return all(r["answers"] for r in rows)
