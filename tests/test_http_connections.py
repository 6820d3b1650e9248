"""Issue 16: real connections to the real services (uvicorn processes on free ports).

- A pooled FAISS connection idle for longer than the service's keep-alive (5 s) must
  not turn into a failure: 6 s gaps between searches, every one answered.
- Bodies beyond each service's limit are answered 413 with a JSON error, not a reset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from common.settings import Settings
from devstack.processes import ServiceProcess, free_port
from faiss_server.aclient import AsyncFaissClient
from faiss_server.client import FaissClient

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


# --- defect 6 across the topic, both services and both clients -------------------------------
ODD_IDS = ["a/b", "x/similar", "50%", "q?x=1#f", "a,b", "..", "café ü"]


def test_ids_the_items_topic_accepts_are_addressable_everywhere(
        faiss_proc: ServiceProcess, api_proc: ServiceProcess) -> None:
    import json

    from streams.validation import parse_item

    sync = FaissClient(faiss_proc.url, "k", read_timeout_s=5)
    for n, item_id in enumerate(ODD_IDS):
        event = {"item_id": item_id, "op": "upsert", "attributes": {},
                 "ts": int(time.time() * 1000)}
        assert parse_item(json.dumps(event).encode()).item_id == item_id  # ingest keeps it
        vec = np.zeros(DIM, np.float32)
        vec[n % DIM] = 100.0
        assert sync.upsert(item_id, vec)["id"] == item_id
        assert sync.vector(item_id)[n % DIM] == 100.0
        assert sync.similar(item_id, 3).hits
        assert item_id not in {i for i, _ in sync.similar("i1", 200, exclude=[item_id]).hits}

        async def via_async(item_id: str = item_id) -> list[str]:
            client = AsyncFaissClient(faiss_proc.url, read_timeout_s=5)
            try:
                return [i for i, _ in (await client.similar(item_id, 3)).hits]
            finally:
                await client.close()

        assert len(asyncio.run(via_async())) == 3
        from common.ids import path_segment

        api = requests.get(f"{api_proc.url}/v1/items/{path_segment(item_id)}/similar",
                           params={"k": 3}, timeout=5).json()
        assert api["item_id"] == item_id and api["source"] == "similar", api
    for item_id in ODD_IDS:
        sync.delete(item_id)


# --- the issue's hand-written cases against the real processes: never a 5xx -----------------
HUGE = "9" * 400
DEEP = "[" * 3000 + "]" * 3000


def hostile_requests(dim: int) -> list[tuple[str, str, str, bytes, dict[str, str]]]:
    """``(service, method, path, body, headers)`` of issue 16's attack cases."""
    import io
    import zipfile

    zeros = ", ".join(["0"] * dim)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as zf, zf.open("vectors.npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 64)})
    key = {"X-API-Key": "k", "Content-Type": "application/json"}
    js = {"Content-Type": "application/json"}
    return [
        ("faiss", "POST", "/v1/search", ('{"vectors": [[' + ", ".join([HUGE] * dim)
                                         + "]]}").encode(), js),
        ("faiss", "POST", "/v1/search", ('{"vectors": ' + DEEP + "}").encode(), js),
        ("faiss", "POST", "/v1/search", ('{"vectors": [[' + zeros + ']], "x": ' + DEEP
                                         + "}").encode(), js),
        ("faiss", "PUT", "/v1/items/x", ('{"vector": ' + DEEP + "}").encode(), key),
        ("faiss", "POST", "/v1/search", ('{"vectors": [["1.5"' + ", 0" * (dim - 1)
                                         + "]]}").encode(), js),
        ("faiss", "POST", "/v1/search", ('{"vectors": [[' + zeros + ']], "exclude": null}'
                                         ).encode(), js),
        ("faiss", "POST", "/v1/index/versions?version=bomb", bomb.getvalue(),
         {"X-API-Key": "k", "Content-Type": "application/octet-stream"}),
        ("faiss", "POST", "/v1/search", b"0" * (5 * 1024 * 1024), js),
        ("faiss", "GET", "/v1/items/i1/similar?k=%092", b"", {}),
        ("faiss", "GET", "/v1/items/i1/similar?k=%20%2010", b"", {}),
        ("faiss", "GET", "/v1/items/i1/similar?exclude=" + ",".join(
            f"x{n}" for n in range(10_001)), b"", {}),
        ("faiss", "GET", "/v1/items/%FF/similar", b"", {}),
        ("api", "GET", "/v1/recommendations?user_id=u1", b"0" * (8 * 1024 * 1024), {}),
        ("api", "GET", "/v1/recommendations?user_id=u1&k=%092", b"", {}),
        ("api", "GET", "/v1/recommendations?user_id=u1&k=%20%2010", b"", {}),
        ("api", "GET", "/v1/items/nope/similar", b"", {}),
        ("api", "GET", "/v1/items/a%2Fb/similar", b"", {}),
        ("api", "GET", "/v1/items/%FF/similar", b"", {}),
    ]


def test_issue_16_attack_cases_get_json_answers_and_no_5xx(
        faiss_proc: ServiceProcess, api_proc: ServiceProcess) -> None:
    bad = []
    for service, method, path, body, headers in hostile_requests(DIM):
        base = faiss_proc.url if service == "faiss" else api_proc.url
        try:
            r = requests.request(method, base + path, data=body or None, headers=headers,
                                 timeout=30)
        except requests.RequestException as exc:
            bad.append(f"{method} {path[:60]}: {exc!r}"[:200])
            continue
        if r.status_code >= 500 or not {"title", "description"} <= set(r.json()) \
                and r.status_code >= 400:
            bad.append(f"{method} {path[:60]} -> {r.status_code} {r.text[:100]}")
    assert bad == []


def send_slowly(url: str, path: str, size: int) -> bytes:
    """POST ``size`` bytes in 256 kB pieces with pauses (a client on a slower link than
    loopback: the server answers while the body is still arriving); the raw answer."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        piece = b"0" * (256 * 1024)
        try:
            for _ in range(size // len(piece)):
                sock.sendall(piece)
                time.sleep(0.01)
        except OSError:
            pass  # the server stopped reading: whatever it answered is below
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError as exc:
            return f"reset: {exc!r}".encode()
        return answer


@pytest.mark.parametrize("target, path, size", [
    ("api", "/v1/recommendations?user_id=u1", 8 * 1024 * 1024),
    ("faiss", "/v1/search", 5 * 1024 * 1024)])
def test_a_slowly_sent_oversized_body_still_gets_its_413(
        api_proc: ServiceProcess, faiss_proc: ServiceProcess, target: str, path: str,
        size: int) -> None:
    answer = send_slowly((api_proc if target == "api" else faiss_proc).url, path, size)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"description"' in answer
