"""The FAISS wire protocol: clients import no faiss, every error body has a ``code``, and
both clients map an answer to the same exception by that code."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from falcon import testing

from common.errors import (
    BadEvent,
    IndexNotReady,
    RecsysError,
    ServiceUnavailable,
    UnknownItem,
    UnknownUser,
)
from common.http_errors import DOMAIN_STATUS
from common.settings import PROJECT_ROOT
from faiss_server.aclient import AsyncFaissClient
from faiss_server.app import create_app
from faiss_server.client import FaissClient
from faiss_server.config import FaissConfig, IndexSpec
from faiss_server.protocol import FaissRequestError, error_for, read_npz, write_npz
from faiss_server.service import IndexService

DIM = 4
KEY = {"X-API-Key": "k"}


def test_importing_the_clients_loads_neither_faiss_nor_the_index_code() -> None:
    code = ("import sys, faiss_server.client, faiss_server.aclient, recommender_server.app, "
            "recommender_server.deps\n"
            "print([m for m in sys.modules if m == 'faiss' or m.startswith('faiss.') or "
            "m in ('faiss_server.index', 'faiss_server.service', 'faiss_server.app')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]", out


def test_no_module_outside_faiss_server_imports_faiss() -> None:
    offenders = []
    for path in PROJECT_ROOT.rglob("*.py"):
        rel = path.relative_to(PROJECT_ROOT)
        if any(part.startswith(".") for part in rel.parts):  # .venv, .local
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom)
                     and node.level == 0 else [])
            if any(n == "faiss" or n.startswith("faiss.") for n in names):
                offenders.append(str(rel))
    assert set(offenders) <= {"faiss_server/index.py"}, offenders


@pytest.fixture
def app(tmp_path) -> testing.TestClient:
    config = FaissConfig(spec=IndexSpec(dim=DIM), api_key="k", data_dir=None,
                         max_json_bytes=2_000)
    service = IndexService(config.spec)
    service.start()
    service.load_version("v1", ["a", "b"], np.eye(2, DIM, dtype=np.float32))
    return testing.TestClient(create_app(config, service))


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "exc"), [
    ("GET", "/v1/items/nope/similar", {}, 404, "unknown_item", UnknownItem),
    ("GET", "/v1/no/such/route", {}, 404, "not_found", FaissRequestError),
    ("GET", "/v1/items/a/similar?k=0", {}, 400, "bad_request", FaissRequestError),
    ("PUT", "/v1/items/a", {"json": {"vector": [1.0] * DIM}}, 401, "unauthorized",
     FaissRequestError),
    ("POST", "/v1/search", {"body": b"x" * 3_000}, 413, "payload_too_large",
     FaissRequestError),
])
def test_every_error_body_has_a_code_that_maps_to_one_exception(
        app: testing.TestClient, method: str, path: str, kwargs: dict, status: int,
        code: str, exc: type[RecsysError]) -> None:
    r = app.simulate_request(method, path, **kwargs)
    assert r.status_code == status
    assert r.json["code"] == code and r.json["title"] and r.json["description"], r.json
    err = error_for(r.status_code, r.content)
    assert type(err) is exc and err.code == code


def test_not_ready_is_index_not_ready_by_its_code(tmp_path) -> None:
    config = FaissConfig(spec=IndexSpec(dim=DIM, kind="ivf"), api_key="k", data_dir=None)
    service = IndexService(config.spec)
    service.start()
    r = testing.TestClient(create_app(config, service)).simulate_post(
        "/v1/search", json={"vectors": [[0.0] * DIM]})
    assert r.status_code == 503 and r.json["code"] == "index_not_ready"
    assert isinstance(error_for(503, r.content), IndexNotReady)


def test_every_domain_error_has_its_own_code() -> None:
    codes = [cls.code for cls in DOMAIN_STATUS]
    assert len(set(codes)) == len(codes)
    assert {UnknownItem.code, UnknownUser.code, IndexNotReady.code,
            ServiceUnavailable.code, BadEvent.code} == set(codes)


def test_titles_do_not_matter_codes_do() -> None:
    body = json.dumps({"title": "Index not ready", "description": "x",
                       "code": "service_unavailable"}).encode()
    assert type(error_for(503, body)) is ServiceUnavailable
    body = json.dumps({"title": "Something else", "code": "index_not_ready"}).encode()
    assert type(error_for(503, body)) is IndexNotReady
    assert type(error_for(502, b"<html>bad gateway</html>")) is ServiceUnavailable
    bad = error_for(400, b"not json")
    assert isinstance(bad, FaissRequestError) and bad.status == 400


def test_both_clients_raise_the_same_exception_for_the_same_answer(monkeypatch) -> None:
    """The blocking and the asyncio client share :func:`error_for`: fed the same error
    answer, they raise the same class with the same message."""
    answer = (404, json.dumps({"title": "Unknown item", "description": "item 'x' is not "
                               "in index version 'v1'", "code": "unknown_item"}).encode())

    class Resp:
        status, data = answer

    sync = FaissClient("http://127.0.0.1:1")
    monkeypatch.setattr(sync._pool, "urlopen", lambda *a, **kw: Resp())
    with pytest.raises(UnknownItem) as sync_err:
        sync.similar("x")

    aio = AsyncFaissClient("http://127.0.0.1:1")

    async def fake_request(*a: object, **kw: object) -> tuple[int, bytes]:
        return answer

    monkeypatch.setattr(aio, "_request", fake_request)
    with pytest.raises(UnknownItem) as aio_err:
        asyncio.run(aio.similar("x"))
    assert str(sync_err.value) == str(aio_err.value)


def test_npz_round_trip_keeps_ids_and_float32() -> None:
    ids, vectors = read_npz(write_npz(["a", "b,c"], np.ones((2, 3), dtype=np.float64)))
    assert ids == ["a", "b,c"] and vectors.dtype == np.float32 and vectors.shape == (2, 3)


def test_openmp_search_threads_are_set_by_the_service_start_up(monkeypatch) -> None:
    """The OpenMP set-up is the app's own ASGI start-up, so ``uvicorn
    faiss_server.asgi:app`` gets it as ``scripts.serve`` does."""
    import faiss_server.app as faiss_app

    calls: list[int] = []
    monkeypatch.setattr(faiss_app, "set_search_threads", calls.append)
    config = FaissConfig(spec=IndexSpec(dim=DIM), data_dir=None, omp_threads=3)
    app = create_app(config)
    assert calls == []  # nothing at build time

    async def run() -> None:
        async with testing.ASGIConductor(app) as conductor:
            assert (await conductor.simulate_get("/health")).status_code == 200

    asyncio.run(run())
    assert calls == [3]
