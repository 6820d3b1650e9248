"""Settings and the services' configuration classes: env overrides, clear errors, one
owner per variable, and the README documents every variable."""

import dataclasses
from pathlib import Path

import pytest

from common.settings import PROJECT_ROOT, Settings, documented_fields, env_fields
from faiss_server.config import FaissConfig, IndexSpec
from recommender_server.config import ApiConfig
from scripts.env_table import CONFIG_CLASSES, END, START, documented, table


def test_defaults_point_at_loopback() -> None:
    s = Settings.from_env({})
    for url in (s.kafka_url, s.mongo_uri, s.redis_url, s.faiss_url):
        assert "127.0.0.1" in url
    assert "journal=true" in s.mongo_uri


def test_env_overrides_and_types() -> None:
    s = Settings.from_env({"RECSYS_TOPIC_PARTITIONS": "8", "RECSYS_CACHE_DIR": "/tmp/x",
                           "RECSYS_KAFKA_URL": "kafka://a:1,kafka://b:2"})
    assert s.topic_partitions == 8
    assert s.cache_dir == Path("/tmp/x")
    assert s.kafka_bootstrap == "a:1,b:2"


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="RECSYS_API_PORT"):
        Settings.from_env({"RECSYS_API_PORT": "eighty"})


def test_explicit_overrides_win() -> None:
    s = Settings.from_env({"RECSYS_MONGO_DB": "fromenv"}, mongo_db="explicit")
    assert s.mongo_db == "explicit"


def test_readme_lists_every_env_var() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [name for name, _, _ in documented() if name not in readme]
    assert not missing, f"README.md does not document: {missing}"
    # the table is exactly what the code generates (python -m scripts.env_table --write)
    assert f"{START}\n{table()}\n{END}" in readme


def test_the_table_covers_every_config_class() -> None:
    assert {Settings, ApiConfig, FaissConfig, IndexSpec} <= set(CONFIG_CLASSES)
    names = {name for name, _, _ in documented()}
    assert {"RECSYS_API_USER_CACHE_TTL_S", "RECSYS_FAISS_MAX_JSON_BYTES",
            "RECSYS_FAISS_INDEX_KIND", "RECSYS_FAISS_INDEX_DIM"} <= names


def test_every_variable_has_one_owner() -> None:
    names = [name for name, _, _ in documented()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_config_field_is_documented_or_explicitly_derived() -> None:
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
        assert documented_fields(cls)  # KeyError/empty if a class lost its docs
    assert [f.name for f in dataclasses.fields(ApiConfig) if f not in env_fields(ApiConfig)] \
        == ["settings"]
    assert {f.name for f in dataclasses.fields(FaissConfig)} - \
        {f.name for f in env_fields(FaissConfig)} == {"spec", "api_key"}


def test_api_config_from_env_then_overrides() -> None:
    env = {"RECSYS_API_USER_CACHE": "ttl", "RECSYS_API_USER_CACHE_TTL_S": "0.25",
           "RECSYS_API_FAISS_BATCH_INFLIGHT": "0", "RECSYS_MONGO_DB": "fromenv"}
    c = ApiConfig.from_env(env=env, faiss_batch_inflight=3)
    assert (c.user_cache, c.user_cache_ttl_s, c.faiss_batch_inflight) == ("ttl", 0.25, 3)
    assert c.settings.mongo_db == "fromenv"
    with pytest.raises(ValueError, match="RECSYS_API_MAX_K='many' is not a valid int"):
        ApiConfig.from_env(env={"RECSYS_API_MAX_K": "many"})
    with pytest.raises(ValueError, match="user_cache must be one of"):
        ApiConfig.from_env(env={"RECSYS_API_USER_CACHE": "sometimes"})


def test_faiss_config_from_env_chooses_the_index() -> None:
    base = Settings.from_env({"RECSYS_LOCAL_DIR": "/tmp/l", "RECSYS_MODEL_DIR": "/tmp/m"})
    c = FaissConfig.from_env(base, env={})
    assert c.data_dir == Path("/tmp/l/faiss") and c.load_roots == (Path("/tmp/m"),
                                                                   Path("/tmp/l"))
    assert c.spec == IndexSpec()
    env = {"RECSYS_FAISS_INDEX_KIND": "ivf", "RECSYS_FAISS_INDEX_DIM": "32",
           "RECSYS_FAISS_INDEX_IVF_NLIST": "64", "RECSYS_FAISS_DATA_DIR": "none",
           "RECSYS_FAISS_LOAD_ROOTS": "/a, /b", "RECSYS_FAISS_KEEP_VERSIONS": "7",
           "RECSYS_FAISS_OMP_THREADS": "2"}
    c = FaissConfig.from_env(base, env=env, ivf_nprobe=8)
    assert (c.spec.kind, c.spec.dim, c.spec.ivf_nlist, c.spec.ivf_nprobe) == ("ivf", 32, 64, 8)
    assert c.data_dir is None and c.load_roots == (Path("/a"), Path("/b"))
    assert (c.keep_versions, c.omp_threads) == (7, 2)
    assert c.api_key == base.faiss_api_key  # owned by Settings (RECSYS_FAISS_API_KEY)
    with pytest.raises(ValueError, match="index kind must be one of"):
        FaissConfig.from_env(base, env={"RECSYS_FAISS_INDEX_KIND": "lsh"})
    with pytest.raises(ValueError, match="RECSYS_FAISS_INDEX_DIM"):
        FaissConfig.from_env(base, env={"RECSYS_FAISS_INDEX_DIM": "64.5"})


def test_asgi_entry_points_read_the_environment(monkeypatch) -> None:
    """``uvicorn faiss_server.asgi:app`` chooses its index through the environment."""
    import importlib
    import sys

    from falcon import testing

    monkeypatch.setenv("RECSYS_FAISS_INDEX_DIM", "16")
    monkeypatch.setenv("RECSYS_FAISS_INDEX_KIND", "hnsw")
    monkeypatch.setenv("RECSYS_FAISS_DATA_DIR", "none")
    monkeypatch.delitem(sys.modules, "faiss_server.asgi", raising=False)
    asgi = importlib.import_module("faiss_server.asgi")
    info = testing.TestClient(asgi.app).simulate_get("/v1/index").json
    assert (info["dim"], info["kind"]) == (16, "hnsw")
    monkeypatch.delitem(sys.modules, "faiss_server.asgi")


def test_the_worker_trains_the_product_default_model() -> None:
    """One product default: the worker's model without a checkpoint, what
    ``scripts.evaluate`` evaluates without ``--model``, and one the pipeline serves."""
    from models.training import PRODUCT_MODEL, SERVED_MODELS

    assert Settings().worker_model == PRODUCT_MODEL and PRODUCT_MODEL in SERVED_MODELS


def test_the_faiss_index_default_fits_the_product_default_model() -> None:
    from models.checkpoint import model_classes

    assert IndexSpec().dim == model_classes()[Settings().worker_model]().vector_dim
