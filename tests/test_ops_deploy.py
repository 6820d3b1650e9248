"""deploy/: the compose file and image use only real settings and give each process
what it needs. No Docker engine here: the YAML is parsed and checked statically."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from common.settings import PROJECT_ROOT, Settings
from faiss_server.config import FaissConfig
from recommender_server.config import ApiConfig
from scripts.env_table import documented

DEPLOY = PROJECT_ROOT / "deploy"
KNOWN = {name for name, _, _ in documented()}

CONNECT = {"RECSYS_STATSD_HOST", "RECSYS_STATSD_PORT", "RECSYS_STATSD_PREFIX"}
STORES = {"RECSYS_MONGO_URI", "RECSYS_MONGO_DB", "RECSYS_REDIS_URL", "RECSYS_REDIS_PREFIX"}
TOPICS = {"RECSYS_TOPIC_INTERACTIONS", "RECSYS_TOPIC_ITEMS", "RECSYS_TOPIC_DEAD_LETTER",
          "RECSYS_TOPIC_PARTITIONS"}
#: What each project process reads from Settings (directly or through its config).
NEEDS = {
    "worker": CONNECT | STORES | TOPICS | {
        "RECSYS_KAFKA_URL", "RECSYS_FAISS_URL", "RECSYS_FAISS_API_KEY", "RECSYS_MODEL_DIR",
        "RECSYS_WORKER_APP_ID", "RECSYS_WORKER_MODEL", "RECSYS_WORKER_BATCH_SIZE",
        "RECSYS_EXPORT_INTERVAL_S", "RECSYS_CHECKPOINT_INTERVAL_S"},
    "faiss": CONNECT | {"RECSYS_FAISS_API_KEY", "RECSYS_FAISS_PORT", "RECSYS_LOCAL_DIR",
                        "RECSYS_MODEL_DIR", "RECSYS_FAISS_INDEX_KIND",
                        "RECSYS_FAISS_INDEX_DIM"},
    "api": CONNECT | STORES | {"RECSYS_FAISS_URL", "RECSYS_API_PORT"},
    "bootstrap": STORES | {"RECSYS_FAISS_URL", "RECSYS_FAISS_API_KEY", "RECSYS_MODEL_DIR",
                           "RECSYS_CACHE_DIR"},
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_services(compose: dict) -> None:
    assert set(compose["services"]) >= {"kafka", "mongo", "redis", "graphite", "grafana",
                                        "worker", "faiss", "api", "bootstrap"}


def test_every_recsys_variable_is_a_setting() -> None:
    for path in (DEPLOY / "docker-compose.yml", DEPLOY / "Dockerfile"):
        used = set(re.findall(r"\bRECSYS_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
        assert used, path
        assert used <= KNOWN, f"{path.name}: not in common/settings.py: {used - KNOWN}"


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_each_process_gets_its_settings(compose: dict, name: str) -> None:
    env = _env(compose["services"][name])
    assert NEEDS[name] <= set(env), f"{name} lacks {NEEDS[name] - set(env)}"
    # values parse as the configuration types (compose interpolations left out)
    values = {k: v for k, v in env.items() if k.startswith("RECSYS_") and "${" not in v}
    settings = Settings.from_env(values)
    if name == "faiss":
        config = FaissConfig.from_env(settings, env=values)
        assert (config.spec.kind, str(config.spec.dim)) == (
            env["RECSYS_FAISS_INDEX_KIND"], env["RECSYS_FAISS_INDEX_DIM"])
        # the index holds what the worker's model exports
        from models.checkpoint import model_classes
        assert config.spec.dim == model_classes()[settings.worker_model]().vector_dim
        keep_alive = s_cmd(compose, name).split("--timeout-keep-alive ")[1].split()[0]
        assert float(keep_alive) == settings.faiss_keep_alive_s
    if name == "api":
        ApiConfig.from_env(settings, env=values)


def s_cmd(compose: dict, name: str) -> str:
    return " ".join(compose["services"][name]["command"])


def test_processes_share_one_configuration(compose: dict) -> None:
    envs = {n: _env(compose["services"][n]) for n in NEEDS}
    for key in STORES | {"RECSYS_FAISS_URL", "RECSYS_STATSD_PREFIX", "RECSYS_FAISS_API_KEY"}:
        values = {e[key] for e in envs.values() if key in e}
        assert len(values) == 1, (key, values)
    assert envs["worker"]["RECSYS_KAFKA_URL"].startswith("kafka://kafka:")
    assert envs["worker"]["RECSYS_STATSD_HOST"] == "graphite"


def test_commands_run_the_project_entry_points(compose: dict) -> None:
    s = compose["services"]
    cmd = {n: " ".join(s[n]["command"]) for n in NEEDS}
    assert cmd["worker"] == "python -m streams.worker"
    assert "python -m scripts.bootstrap" in cmd["bootstrap"]
    assert "python -m scripts.publish" in cmd["bootstrap"]
    assert "faiss_server.asgi:app" in cmd["faiss"] and "--workers 1" in cmd["faiss"]
    assert "recommender_server.asgi:app" in cmd["api"] and "--port 8080" in cmd["api"]
    for module in ("streams/worker.py", "scripts/bootstrap.py", "scripts/publish.py",
                   "faiss_server/asgi.py", "recommender_server/asgi.py"):
        assert (PROJECT_ROOT / module).is_file(), module
    for n in NEEDS:
        assert s[n]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert s["worker"]["depends_on"]["bootstrap"]["condition"] == \
        "service_completed_successfully"


def test_mounted_files_exist(compose: dict) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).resolve().exists(), f"{name}: {source}"


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install -r requirements.txt" in text
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (PROJECT_ROOT / src).exists(), src


def test_statsd_config_matches_the_local_stack() -> None:
    text = (DEPLOY / "graphite" / "statsd.js").read_text(encoding="utf-8")
    for needle in ('"legacyNamespace": false', '"percentThreshold": [90, 99]',
                   '"flushInterval": 1000', '"deleteIdleStats": true'):
        assert needle in text, needle
    assert Path(DEPLOY / "SCALING.md").is_file()
