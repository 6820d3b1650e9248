"""The FAISS service as a real process (uvicorn on a free 127.0.0.1 port) via its client.

No stack needed; marked ``integration`` because processes and sockets are involved.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from common.errors import ServiceUnavailable, UnknownItem
from common.settings import Settings
from devstack.processes import ServiceProcess, free_port
from faiss_server.client import FaissClient, FaissRequestError

pytestmark = pytest.mark.integration

DIM = 16


def fuzz_openapi(base_url: str, headers: dict[str, str] | None = None,
                 max_examples: int = 25) -> tuple[list[str], Counter[int]]:
    """Schema-driven fuzzing (schemathesis, valid and invalid input) of every operation in
    ``{base_url}/openapi.json``; returns one line per 5xx answer and a count of statuses
    (bounded: ``max_examples`` per operation and generation mode).

    The examples are derandomized (the same on every run), so CI is reproducible: a
    random fuzz once found a real 500 (``~unknown`` paths) in one run out of several,
    and a landing must not depend on luck. To explore, raise ``max_examples`` locally.
    """
    import hypothesis
    import hypothesis.errors
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    def runner(op: Any, mode: Any) -> Any:
        label = f"{op.method.upper()} {op.path} [{mode.value}]"

        @hypothesis.settings(max_examples=max_examples, deadline=None, database=None,
                             derandomize=True,
                             phases=[hypothesis.Phase.generate],
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            resp = case.call(base_url=base_url, headers=headers, timeout=30)
            statuses[resp.status_code] += 1
            if resp.status_code >= 500:
                failures.append(f"{label} -> {resp.status_code}: {resp.text[:200]}")

        return run

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                runner(op, mode)()
            except hypothesis.errors.Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # nothing in this operation can be made invalid (no parameters, no body)
    return failures, statuses


@pytest.fixture(scope="module")
def faiss_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base = Settings.from_env()
    data = tmp_path_factory.mktemp("faiss")
    port = free_port()
    settings = Settings.from_env(faiss_port=port, faiss_url=f"http://127.0.0.1:{port}",
                                 faiss_api_key="proc-key", local_dir=data,
                                 model_dir=data / "models", statsd_prefix="recsys-test")
    args = ["faiss", "--kind", "flat", "--dim", str(DIM), "--data-dir", str(data / "idx")]
    with ServiceProcess(args, port, settings, log_path=data / "faiss.log") as proc:
        client = FaissClient(proc.url, "proc-key", read_timeout_s=5)
        client.load_version((ids(2000), vecs(2000)), "v1")
        yield proc
    del base


def ids(n: int, prefix: str = "i") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def client(faiss_service: ServiceProcess) -> FaissClient:
    return FaissClient(faiss_service.url, "proc-key", read_timeout_s=5)


def test_client_round_trip(client: FaissClient) -> None:
    res = client.search(vecs(3, seed=1), k=5, exclude=["i1"])
    assert len(res.results) == 3 and all(len(r) == 5 for r in res.results)
    sim = client.similar("i5", k=4)
    assert len(sim.hits) == 4 and "i5" not in {i for i, _ in sim.hits}
    client.upsert("extra", np.full(DIM, 50.0))
    assert client.search(np.full(DIM, 1.0), k=1).results[0][0][0] == "extra"
    assert client.delete("extra")["deleted"] is True
    with pytest.raises(UnknownItem):
        client.similar("extra", 3)
    with pytest.raises(FaissRequestError) as err:
        client.search(np.zeros(DIM - 1), k=3)
    assert err.value.status == 400
    info = client.info()
    assert info["dim"] == DIM and info["kind"] == "flat" and info["size"] >= 2000


def test_admin_calls_without_the_key_get_401(faiss_service: ServiceProcess) -> None:
    for key in (None, "wrong"):
        anon = FaissClient(faiss_service.url, key, read_timeout_s=5)
        for call in (lambda c: c.upsert("x", np.zeros(DIM)), lambda c: c.delete("i1"),
                     lambda c: c.load_version((["a"], np.zeros((1, DIM))), "evil"),
                     lambda c: c.snapshot()):
            with pytest.raises(FaissRequestError) as err:
                call(anon)
            assert err.value.status == 401


def test_index_swap_under_continuous_queries_fails_no_request(client: FaissClient) -> None:
    """Readers hammer /v1/search while three new versions are loaded; none may fail."""
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    versions: set[str] = set()
    errors: list[str] = []

    def reader(seed: int) -> None:
        c = FaissClient(client.base_url, read_timeout_s=10)
        q = vecs(2, seed=seed)
        while not stop.is_set():
            try:
                res = c.search(q, k=10)
                versions.add(res.version)
                outcomes["ok" if all(len(r) == 10 for r in res.results) else "short"] += 1
            except Exception as exc:  # every failure is counted and reported
                outcomes["failed"] += 1
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        for n, v in enumerate(["swap-a", "swap-b", "swap-c"]):
            out = client.load_version((ids(30_000, prefix=v), vecs(30_000, seed=n)), v)
            assert out["version"] == v
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert outcomes["failed"] == 0, errors[:5]
    assert outcomes["short"] == 0
    assert outcomes["ok"] > 0 and {"swap-a", "swap-b", "swap-c"} & versions
    assert client.info()["version"] == "swap-c"


def test_saved_version_is_loaded_by_a_restarted_process(tmp_path) -> None:
    port = free_port()
    settings = Settings.from_env(faiss_api_key="k", local_dir=tmp_path)
    args = ["faiss", "--dim", str(DIM), "--data-dir", str(tmp_path / "idx")]
    with ServiceProcess(args, port, settings) as proc:
        FaissClient(proc.url, "k", read_timeout_s=5).load_version((ids(10), vecs(10)), "keep")
    with ServiceProcess(args, port, settings) as proc:
        info = FaissClient(proc.url, read_timeout_s=5).info()
    assert (info["version"], info["size"]) == ("keep", 10)


def test_stopped_service_is_service_unavailable_quickly() -> None:
    dead = FaissClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailable):
        dead.search(np.zeros(DIM), 3)


def test_schema_fuzz_finds_no_server_error(faiss_service: ServiceProcess) -> None:
    failures, statuses = fuzz_openapi(faiss_service.url, headers={"X-API-Key": "proc-key"})
    assert failures == []
    assert statuses[200] and statuses[400] and statuses[404]  # it reached real handlers
