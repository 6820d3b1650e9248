"""Issue 16: the FAISS service under hostile input, through ``falcon.testing``.

Each case here was a 500, a silent misreading or a leak on the code before the fix:
numbers beyond float range, deep nesting, non-numbers taken as numbers, an ``.npz``
whose header or zip declares gigabytes, the comma form of ``exclude``, loose integers,
ids holding ``/`` and saved versions that were never pruned.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from falcon import testing

from common.ids import path_segment
from faiss_server.app import create_app
from faiss_server.config import FaissConfig, IndexSpec
from faiss_server.protocol import write_npz
from faiss_server.service import IndexService

DIM = 8
KEY = {"X-API-Key": "test-key"}
UPLOAD = {**KEY, "Content-Type": "application/octet-stream"}
N = 60


@pytest.fixture
def config(tmp_path: Path) -> FaissConfig:
    return FaissConfig(spec=IndexSpec(dim=DIM), api_key="test-key",
                       data_dir=tmp_path / "faiss", load_roots=(tmp_path,),
                       max_exclude=50, max_json_bytes=200_000, max_npz_bytes=100_000,
                       keep_versions=2)


@pytest.fixture
def service(config: FaissConfig) -> IndexService:
    svc = IndexService(config.spec, config.data_dir, config.keep_versions)
    svc.start()
    rng = np.random.default_rng(0)
    svc.load_version("v1", [f"i{n}" for n in range(N)],
                     rng.normal(size=(N, DIM)).astype(np.float32))
    return svc


@pytest.fixture
def client(config: FaissConfig, service: IndexService) -> testing.TestClient:
    return testing.TestClient(create_app(config, service))


def assert_json_error(r: testing.Result, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.json["title"] and r.json["description"], r.json


# --- defect 2: no 500, and only numbers are numbers -----------------------------------------
HUGE = "9" * 400
DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize("body", [
    '{"vectors": [[' + ", ".join([HUGE] * DIM) + "]]}",
    '{"vectors": [[0.1]], "k": ' + HUGE + "}",
    '{"vectors": ' + DEEP + "}",
    '{"vectors": [[' + ", ".join(["0"] * DIM) + ']], "extra": ' + DEEP + "}",
    '{"vectors": [[' + ", ".join(['"1.5"'] * DIM) + "]]}",
    '{"vectors": [[' + ", ".join(["true"] * DIM) + "]]}",
    '{"vectors": [[' + ", ".join(["null"] * DIM) + "]]}",
    '{"vectors": [[' + ", ".join(["0"] * DIM) + ']], "exclude": null}',
    '{"vectors": [[' + ", ".join(["0"] * DIM) + ']], "exclude": [true]}',
    '{"vectors": [[' + ", ".join(["0"] * DIM) + ']], "exclude": "i1"}',
])
def test_search_rejects_what_the_schema_does_not_allow(client: testing.TestClient,
                                                       body: str) -> None:
    assert_json_error(client.simulate_post("/v1/search", body=body,
                                           content_type="application/json"), 400)


@pytest.mark.parametrize("body", [
    '{"vector": [' + ", ".join([HUGE] * DIM) + "]}",
    '{"vector": ' + DEEP + "}",
    '{"vector": [0, 0, 0, 0, 0, 0, 0, 0], "x": ' + DEEP + "}",
    '{"vector": [' + ", ".join(['"1"'] * DIM) + "]}",
    '{"vector": [' + ", ".join(["false"] * DIM) + "]}",
    '{"vector": null}',
])
def test_upsert_rejects_bad_vectors_and_changes_nothing(client: testing.TestClient,
                                                        service: IndexService,
                                                        body: str) -> None:
    r = client.simulate_put("/v1/items/new", body=body, headers=KEY,
                            content_type="application/json")
    assert_json_error(r, 400)
    assert "new" not in service.current


def npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An ``.npz`` whose ``vectors`` header declares ``shape`` but holds no data."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("ids.npy", "w") as f:
            np.save(f, np.array(["a"]), allow_pickle=False)
        with zf.open("vectors.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_bomb(rows: int) -> bytes:
    """A small upload that unpacks to ``rows * DIM * 4`` bytes of zeros."""
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.array([f"b{i}" for i in range(rows)]),
                        vectors=np.zeros((rows, DIM), np.float32))
    return buf.getvalue()


@pytest.mark.parametrize("body", [npz_declaring((2**40, 64)), npz_declaring((2**40, DIM)),
                                  zip_bomb(20_000)])
def test_oversized_npz_is_refused_before_loading(client: testing.TestClient, body: bytes,
                                                 tmp_path: Path) -> None:
    assert len(body) < 100_000  # small on the wire: only the declared size is large
    r = client.simulate_post("/v1/index/versions", params={"version": "big"}, body=body,
                             headers=UPLOAD)
    assert_json_error(r, 400)
    assert "limit" in r.json["description"] or "bytes" in r.json["description"]
    (tmp_path / "bomb.npz").write_bytes(body)  # the same by path
    r = client.simulate_post("/v1/index/versions", headers=KEY,
                             json={"version": "big", "path": str(tmp_path / "bomb.npz")})
    assert_json_error(r, 400)
    assert client.simulate_get("/v1/index").json["version"] == "v1"


def test_npz_within_the_limit_still_loads(client: testing.TestClient) -> None:
    r = client.simulate_post("/v1/index/versions", params={"version": "ok"},
                             body=zip_bomb(1_000), headers=UPLOAD)  # 32 kB unpacked
    assert r.status_code == 201, r.text
    assert r.json["size"] == 1_000


# --- defect 3: exclude lists ----------------------------------------------------------------
def similar_ids(client: testing.TestClient, query: str) -> list[str]:
    r = client.simulate_get("/v1/items/i0/similar", query_string=query)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json["results"]]


def test_comma_separated_exclude_excludes_every_id(client: testing.TestClient) -> None:
    top = similar_ids(client, "k=5")
    assert len(top) == 5
    for query in ("k=5&exclude=" + ",".join(top[:3]),
                  "k=5&" + "&".join(f"exclude={i}" for i in top[:3]),
                  "k=5&exclude=" + ",".join(top[:2]) + f"&exclude={top[2]}"):
        got = similar_ids(client, query)
        assert len(got) == 5 and not set(got) & set(top[:3]), (query, got)


def test_exclude_limit_counts_comma_separated_ids(client: testing.TestClient) -> None:
    ids = ",".join(f"x{n}" for n in range(51))  # max_exclude is 50
    r = client.simulate_get("/v1/items/i0/similar", query_string="exclude=" + ids)
    assert_json_error(r, 400)
    assert client.simulate_get("/v1/items/i0/similar", query_string="exclude=" + ids[
        :ids.rindex(",")]).status_code == 200


def test_search_exclude_list_is_honoured_and_bounded(client: testing.TestClient,
                                                     service: IndexService) -> None:
    q = service.current.vector("i3").tolist()
    top = [h["id"] for h in client.simulate_post(
        "/v1/search", json={"vectors": q, "k": 5}).json["results"][0]]
    got = client.simulate_post("/v1/search", json={"vectors": q, "k": 5,
                                                   "exclude": top[:3]}).json["results"][0]
    assert not {h["id"] for h in got} & set(top[:3]) and len(got) == 5
    r = client.simulate_post("/v1/search", json={"vectors": q, "exclude": ["x"] * 51})
    assert_json_error(r, 400)


def test_other_query_values_with_commas_are_not_silently_split(
        client: testing.TestClient) -> None:
    body = write_npz(["a"], np.ones((1, DIM)))
    for query in ("version=v7,v8", "version=v7&version=v8"):
        r = client.simulate_post("/v1/index/versions", query_string=query, body=body,
                                 headers=UPLOAD)
        assert_json_error(r, 400)
    assert client.simulate_get("/v1/index").json["version"] == "v1"


# --- defect 5: integers are digits ---------------------------------------------------------
@pytest.mark.parametrize("k", ["%092", "%20%2010", "1_0", "+3", "-1", "3.0", "%D9%A3", "", "0",
                               "1,2", "3&k=4"])
def test_k_must_be_plain_digits_given_once(client: testing.TestClient, k: str) -> None:
    assert_json_error(client.simulate_get("/v1/items/i0/similar", query_string=f"k={k}"), 400)


# --- defect 6: any stored id is addressable, percent-encoded --------------------------------
@pytest.mark.parametrize("item_id", ["a/b", "x/similar", "50%", "q?x=1#f", "a,b", " sp ",
                                     ".", "..", "café/ü", "x" * 256])
def test_any_id_round_trips_through_every_item_endpoint(client: testing.TestClient,
                                                        item_id: str) -> None:
    seg = path_segment(item_id)
    vec = [50.0] + [0.0] * (DIM - 1)
    r = client.simulate_put(f"/v1/items/{seg}", json={"vector": vec}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json["id"] == item_id
    got = client.simulate_get(f"/v1/items/{seg}")
    assert got.status_code == 200 and got.json["id"] == item_id
    assert got.json["vector"] == vec
    hits = client.simulate_post("/v1/search", json={"vectors": [vec], "k": 1}).json
    assert hits["results"][0][0]["id"] == item_id
    sim = client.simulate_get(f"/v1/items/{seg}/similar", params={"k": 3})
    assert sim.status_code == 200 and sim.json["item_id"] == item_id
    assert item_id not in {h["id"] for h in sim.json["results"]}
    assert client.simulate_get("/v1/items/i0/similar", query_string="k=60&exclude="
                               + seg).status_code == 200
    assert client.simulate_delete(f"/v1/items/{seg}", headers=KEY).status_code == 200
    assert_json_error(client.simulate_get(f"/v1/items/{seg}"), 404)


def test_overlong_or_undecodable_ids_are_json_errors(client: testing.TestClient) -> None:
    assert_json_error(client.simulate_get("/v1/items/" + "x" * 257), 400)
    assert_json_error(client.simulate_get("/v1/items/%FF%FE/similar"), 404)


# --- defect 4: saved versions are pruned ---------------------------------------------------
def test_saved_versions_keep_the_newest_n_plus_the_serving_one(
        client: testing.TestClient, config: FaissConfig, service: IndexService) -> None:
    folder = config.data_dir / "versions"  # type: ignore[operator]
    for n in range(12):
        body = write_npz([f"v{n}-{i}" for i in range(5)], np.ones((5, DIM)))
        r = client.simulate_post("/v1/index/versions", params={"version": f"e{n}"}, body=body,
                                 headers=UPLOAD)
        assert r.status_code == 201, r.text
        assert len(list(folder.iterdir())) <= config.keep_versions + 1
    assert {f.name for f in folder.iterdir()} == {"e11", "e10", "e9"}
    assert service.current.version == "e11"
    assert client.simulate_post("/v1/index/snapshot", headers=KEY).status_code == 200
    assert {f.name for f in folder.iterdir()} == {"e11", "e10", "e9"}
    again = testing.TestClient(create_app(config))  # a restart serves the newest
    assert again.simulate_get("/v1/index").json["version"] == "e11"
