"""Settings: env overrides, clear errors, and the README documents every variable."""

from pathlib import Path

import pytest

from common.settings import PROJECT_ROOT, Settings, documented_fields


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
    missing = [name for name, _, _ in documented_fields() if name not in readme]
    assert not missing, f"README.md does not document: {missing}"
