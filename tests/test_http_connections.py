"""Issue 16: real connections to the real services (uvicorn processes on free ports).

- A pooled FAISS connection idle for longer than the service's keep-alive (5 s) must
  not turn into a failure: 6 s gaps between searches, every one answered.
- Bodies beyond each service's limit are answered 413 with a JSON error, not a reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from common.settings import Settings
from faiss_server.aclient import AsyncFaissClient
from faiss_server.client import FaissClient
from scripts.processes import free_port
from scripts.serve import ServiceProcess

pytestmark = pytest.mark.integration

DIM = 8


@pytest.fixture(scope="module")
def faiss_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp: Path = tmp_path_factory.mktemp("conn")
    port = free_port()
    settings = Settings.from_env(faiss_port=port, faiss_url=f"http://127.0.0.1:{port}",
                                 faiss_api_key="k", local_dir=tmp)
    args = ["faiss", "--dim", str(DIM), "--data-dir", "none"]
    with ServiceProcess(args, port, settings, log_path=tmp / "faiss.log") as proc:
        x = np.random.default_rng(0).normal(size=(100, DIM)).astype(np.float32)
        FaissClient(proc.url, "k", read_timeout_s=10).load_version(
            ([f"i{n}" for n in range(100)], x), "v1")
        yield proc


@pytest.mark.slow
def test_pooled_connections_survive_gaps_longer_than_the_keep_alive(
        faiss_proc: ServiceProcess) -> None:
    """Default keep-alive (5 s) on the service, default pool settings on the client."""
    async def run() -> list[str]:
        client = AsyncFaissClient(faiss_proc.url, read_timeout_s=2.0)
        outcomes = []
        try:
            for n in range(3):
                if n:
                    await asyncio.sleep(6.0)
                try:
                    await client.search([0.1] * DIM, 5)
                    outcomes.append("ok")
                except Exception as exc:  # counted: the test expects none
                    outcomes.append(repr(exc))
                try:
                    await client.similar("i1", 3)
                    outcomes.append("ok")
                except Exception as exc:  # counted: the test expects none
                    outcomes.append(repr(exc))
        finally:
            await client.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes == ["ok"] * 6, outcomes


def test_a_connection_closed_before_the_answer_is_retried_once_on_a_new_one() -> None:
    """A server that answers the first request of each connection and closes the second
    without a byte (what a keep-alive timeout racing a request looks like)."""
    answer = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 47'
              b'\r\n\r\n{"version": "v", "results": [[{"id": "a", "score": 1}]]}')
    answer = answer.replace(b"47", str(len(answer.split(b"\r\n\r\n", 1)[1])).encode())

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if n == 1:
                    break
                writer.write(answer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed its pool
        finally:
            writer.close()

    async def run() -> tuple[list[str], int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncFaissClient(f"http://127.0.0.1:{port}", read_timeout_s=2.0)
        try:
            ids = [(await client.search([0.1], 1)).results[0][0][0] for _ in range(3)]
            return ids, client.retries
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    # requests 2 and 3 each met a closed connection and were sent again on a new one
    assert asyncio.run(run()) == (["a", "a", "a"], 2)


@pytest.fixture(scope="module")
def api_proc(faiss_proc: ServiceProcess, stack: Settings,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp: Path = tmp_path_factory.mktemp("api")
    port = free_port()
    settings = Settings.from_env(
        **{f: getattr(stack, f) for f in ("mongo_uri", "mongo_db", "redis_url",
                                          "redis_prefix", "statsd_prefix", "local_dir")},
        faiss_url=faiss_proc.url, api_port=port)
    with ServiceProcess(["api", "--workers", "1", "--user-cache-preload", "0"], port,
                        settings, log_path=tmp / "api.log") as proc:
        yield proc


@pytest.mark.parametrize("target, method, size", [
    ("api", "GET", 8 * 1024 * 1024), ("api", "POST", 8 * 1024 * 1024),
    ("faiss", "POST", 5 * 1024 * 1024)])
def test_oversized_bodies_get_a_413_json_answer_not_a_reset(
        api_proc: ServiceProcess, faiss_proc: ServiceProcess, target: str, method: str,
        size: int) -> None:
    url = (api_proc.url + "/v1/recommendations?user_id=u1" if target == "api"
           else faiss_proc.url + "/v1/search")
    body = b'{"vectors": [[' + b"0," * (size // 2) + b"0]]}"
    r = requests.request(method, url, data=body, timeout=30,
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["title"] and "bytes" in r.json()["description"]
    # the service is still fine
    assert requests.get((api_proc if target == "api" else faiss_proc).url + "/health",
                        timeout=5).status_code == 200
