"""The FAISS service over HTTP, through ``falcon.testing`` (no process, no stack)."""

from __future__ import annotations

import numpy as np
import pytest
from falcon import testing

from faiss_server.app import create_app
from faiss_server.config import FaissConfig, IndexSpec
from faiss_server.protocol import write_npz
from faiss_server.service import IndexService

DIM = 8
KEY = {"X-API-Key": "test-key"}


@pytest.fixture
def service(tmp_path) -> IndexService:
    svc = IndexService(IndexSpec(dim=DIM), tmp_path / "faiss")
    svc.start()
    rng = np.random.default_rng(0)
    svc.load_version("v1", [f"i{n}" for n in range(50)],
                     rng.normal(size=(50, DIM)).astype(np.float32))
    return svc


@pytest.fixture
def config(tmp_path) -> FaissConfig:
    return FaissConfig(spec=IndexSpec(dim=DIM), api_key="test-key",
                       data_dir=tmp_path / "faiss", load_roots=(tmp_path / "exports",),
                       max_k=50, max_batch=4, max_json_bytes=20_000, max_upload_bytes=100_000)


@pytest.fixture
def client(config: FaissConfig, service: IndexService) -> testing.TestClient:
    return testing.TestClient(create_app(config, service))


def test_search_one_and_many_vectors(client: testing.TestClient) -> None:
    q = [[0.1] * DIM, [-0.1] * DIM]
    r = client.simulate_post("/v1/search", json={"vectors": q, "k": 3, "exclude": ["i1"]})
    assert r.status_code == 200
    assert r.json["version"] == "v1"
    assert [len(row) for row in r.json["results"]] == [3, 3]
    assert all(h["id"] != "i1" for row in r.json["results"] for h in row)


@pytest.mark.parametrize("body, fragment", [
    ({"vectors": [[0.1] * (DIM - 1)]}, "dimension"),
    ({"vectors": [[0.1] * DIM], "k": 0}, "k must be"),
    ({"vectors": [[0.1] * DIM], "k": 51}, "k must be"),
    ({"vectors": [[0.1] * DIM], "k": "3"}, "$.k"),
    ({"vectors": []}, "vectors must be"),
    ({"vectors": [[0.1] * DIM] * 5}, "vectors must be"),
    ({"vectors": [["x"] * DIM]}, ""),
    ({"vectors": [[0.1] * DIM], "exclude": [1]}, "exclude"),
    ({"vectors": [[1e39] * DIM]}, "NaN or infinity"),
    ({"vectors": [[0.1] * DIM], "boosts": [{"i1": -1.0}]}, ">= 0"),
    ({"vectors": [[0.1] * DIM], "boosts": [{"i1": 1.0}, {}]}, "one object per query"),
    ({"vectors": [[0.1] * DIM], "boosts": [{"i1": "1"}]}, "boosts"),
    ({"vectors": [[0.1] * DIM], "only": [1]}, "only"),
    ({"vectors": [[0.1] * DIM], "only": "i1"}, "only"),
])
def test_bad_search_input_is_a_400_with_title_and_description(
        client: testing.TestClient, body: dict, fragment: str) -> None:
    r = client.simulate_post("/v1/search", json=body)
    assert r.status_code == 400, r.json
    assert r.json["title"] and fragment in r.json["description"]


def test_a_boost_lifts_its_item_into_the_answer(client: testing.TestClient) -> None:
    q = [[0.1] * DIM]
    plain = client.simulate_post("/v1/search", json={"vectors": q, "k": 3}).json
    last = client.simulate_post("/v1/search", json={"vectors": q, "k": 50}).json
    bottom = last["results"][0][-1]
    r = client.simulate_post("/v1/search", json={"vectors": q, "k": 3,
                                                 "boosts": [{bottom["id"]: 100.0}]})
    assert r.status_code == 200, r.json
    hits = r.json["results"][0]
    assert hits[0]["id"] == bottom["id"] != plain["results"][0][0]["id"]
    assert hits[0]["score"] == pytest.approx(bottom["score"] + 100.0, abs=1e-4)
    assert [h["id"] for h in hits[1:]] == [h["id"] for h in plain["results"][0][:2]]


def test_a_search_within_only_returns_only_those_ids(client: testing.TestClient) -> None:
    q = [[0.1] * DIM]
    last = client.simulate_post("/v1/search", json={"vectors": q, "k": 50}).json
    allowed = [h["id"] for h in last["results"][0][-4:]]  # the four lowest
    r = client.simulate_post("/v1/search", json={"vectors": q, "k": 3,
                                                 "only": [*allowed, "ghost"]})
    assert r.status_code == 200, r.json
    assert [h["id"] for h in r.json["results"][0]] == allowed[:3]


def test_nan_in_json_and_broken_json_are_400(client: testing.TestClient) -> None:
    nan = '{"vectors": [[NaN' + ", 0" * (DIM - 1) + "]]}"
    assert client.simulate_post("/v1/search", body=nan).status_code == 400
    assert client.simulate_post("/v1/search", body="{not json").status_code == 400
    assert client.simulate_post("/v1/search", body="[1, 2]").status_code == 400


def test_oversize_body_is_413(client: testing.TestClient) -> None:
    big = {"vectors": [[0.1] * DIM], "exclude": ["x" * 100] * 300}
    r = client.simulate_post("/v1/search", json=big)
    assert r.status_code == 413 and r.json["title"]


def test_similar_excludes_itself_and_unknown_item_is_404(client: testing.TestClient) -> None:
    r = client.simulate_get("/v1/items/i4/similar", params={"k": 5})
    assert r.status_code == 200 and len(r.json["results"]) == 5
    assert "i4" not in {h["id"] for h in r.json["results"]}
    r = client.simulate_get("/v1/items/nope/similar")
    assert r.status_code == 404 and r.json["title"] == "Unknown item"
    assert client.simulate_get("/v1/items/i4/similar", params={"k": 0}).status_code == 400


@pytest.mark.parametrize("method, path, kwargs", [
    ("PUT", "/v1/items/x", {"json": {"vector": [0.0] * DIM}}),
    ("DELETE", "/v1/items/i1", {}),
    ("POST", "/v1/index/versions", {"json": {"version": "v9", "path": "/tmp/x.npz"}}),
    ("POST", "/v1/index/snapshot", {}),
])
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_write_endpoints_need_the_api_key(client: testing.TestClient, service: IndexService,
                                          method: str, path: str, kwargs: dict,
                                          headers: dict) -> None:
    r = client.simulate_request(method, path, headers=headers, **kwargs)
    assert r.status_code == 401 and r.json["title"] == "Unauthorized"
    assert service.info()["version"] == "v1" and service.info()["size"] == 50


def test_upsert_then_delete_an_item(client: testing.TestClient) -> None:
    vec = [100.0] + [0.0] * (DIM - 1)
    r = client.simulate_put("/v1/items/new", json={"vector": vec}, headers=KEY)
    assert r.status_code == 200 and r.json["size"] == 51
    assert client.simulate_get("/v1/items/new").json["vector"] == vec
    hit = client.simulate_post("/v1/search", json={"vectors": [vec], "k": 1}).json
    assert hit["results"][0][0]["id"] == "new"
    assert client.simulate_put("/v1/items/new", json={"vector": [1.0]},
                               headers=KEY).status_code == 400
    assert client.simulate_delete("/v1/items/new", headers=KEY).status_code == 200
    assert client.simulate_delete("/v1/items/new", headers=KEY).status_code == 404


def test_load_a_version_by_upload_and_by_path(client: testing.TestClient, tmp_path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, DIM)).astype(np.float32)
    r = client.simulate_post("/v1/index/versions", params={"version": "v2"},
                             body=write_npz([f"n{i}" for i in range(10)], x),
                             headers={**KEY, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.json
    assert client.simulate_get("/v1/index").json["version"] == "v2"
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "v3.npz").write_bytes(write_npz(["z"], x[:1]))
    r = client.simulate_post("/v1/index/versions", headers=KEY,
                             json={"version": "v3", "path": str(tmp_path / "exports/v3.npz")})
    assert r.status_code == 201 and r.json["size"] == 1
    info = client.simulate_get("/v1/index").json
    assert (info["version"], info["size"], info["dim"], info["kind"]) == ("v3", 1, DIM, "flat")


@pytest.mark.parametrize("kwargs, status", [
    ({"json": {"version": "v4", "path": "/etc/passwd"}}, 400),  # outside the allowed roots
    ({"json": {"version": "v4", "path": 3}}, 400),
    ({"params": {"version": "v4"}, "body": b"not an npz"}, 400),
    ({"params": {"version": "../v4"}, "body": write_npz(["a"], np.zeros((1, DIM)))}, 400),
    ({"params": {"version": "v4"}, "body": write_npz(["a"], np.zeros((1, 3)))}, 400),
    ({"params": {"version": "v4"}, "body": b"x" * 100_001}, 413),
])
def test_bad_version_loads_leave_the_current_version_serving(
        client: testing.TestClient, kwargs: dict, status: int) -> None:
    headers = {**KEY}
    if "body" in kwargs:
        headers["Content-Type"] = "application/octet-stream"
    r = client.simulate_post("/v1/index/versions", headers=headers, **kwargs)
    assert r.status_code == status, r.json
    assert client.simulate_get("/v1/index").json["version"] == "v1"


def test_version_survives_a_restart(config: FaissConfig, client: testing.TestClient) -> None:
    again = testing.TestClient(create_app(config))  # loads config.data_dir/CURRENT
    assert again.simulate_get("/v1/index").json["version"] == "v1"
    assert again.simulate_get("/health").json == {"status": "ok", "version": "v1", "size": 50}


def test_ivf_service_reports_not_ready(tmp_path) -> None:
    cfg = FaissConfig(spec=IndexSpec(dim=DIM, kind="ivf"), data_dir=None)
    c = testing.TestClient(create_app(cfg))
    assert c.simulate_get("/health").status_code == 503
    r = c.simulate_post("/v1/search", json={"vectors": [[0.0] * DIM]})
    assert r.status_code == 503 and r.json["title"] == "Index not ready"


def test_openapi_describes_every_route(client: testing.TestClient) -> None:
    doc = client.simulate_get("/openapi.json").json
    assert set(doc["paths"]) == {
        "/v1/search", "/v1/items/{item_id}/similar", "/v1/items/{item_id}", "/v1/index",
        "/v1/index/versions", "/v1/index/snapshot", "/health", "/openapi.json"}
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"


@pytest.mark.parametrize("raw", ["~no-such-user-here/v.npz", "exports/\x00.npz"])
def test_unresolvable_load_path_is_a_400_not_a_500(client: testing.TestClient,
                                                   raw: str) -> None:
    """Found by the schema fuzz: ``~unknown`` made ``expanduser`` raise (a 500)."""
    r = client.simulate_post("/v1/index/versions", json={"version": "v9", "path": raw},
                             headers=KEY)
    assert r.status_code == 400
    assert "cannot be resolved" in r.json["description"]
