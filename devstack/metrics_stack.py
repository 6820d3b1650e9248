"""The local metrics pipeline: statsd → carbon → graphite-web.

Run by ``python -m scripts.metrics_stack up|status|down`` (``up`` installs what is
missing and is idempotent; ``down`` stops only what ``up`` started, by PID file):

- statsd daemon (npm ``statsd``, pinned :data:`STATSD_VERSION`, installed with npm into
  ``.local/metrics/statsd``): UDP ``127.0.0.1:RECSYS_STATSD_PORT``, admin TCP on
  ``statsd_mgmt_port``, flushes every second to carbon;
- carbon-cache (Debian ``graphite-carbon``): line receiver on 127.0.0.1, whisper files in
  ``.local/metrics/whisper`` with retention :data:`RETENTIONS`;
- graphite-web (Debian ``graphite-web``, Django, run by the system ``/usr/bin/python3``):
  render API on ``http://127.0.0.1:8085``, sqlite DB in ``.local/metrics/graphite``.

Debian packages are installed with ``apt-get install -y -q`` only when missing. Generated
configuration lives in ``.local/metrics/conf``; logs in ``.local/logs``; PID files in
``.local/run``. Ready means a real round trip: a statsd counter sent to the daemon shows
up in Graphite's render API.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.settings import Settings
from devstack.pidfiles import tail as _tail
from devstack.supervisor import Service, StackError, Supervisor

log = logging.getLogger("metrics_stack")

STATSD_VERSION = "0.9.0"
DEBIAN_PACKAGES = ("graphite-carbon", "graphite-web")
SYSTEM_PYTHON = "/usr/bin/python3"
#: Whisper retention: 1 s points for 6 h, then 1 min points for 7 days (~380 kB/series).
RETENTIONS = "1s:6h,1m:7d"
#: Test sessions use prefixes ``recsys-test-<run id>``: keep them briefly (~7 kB/series).
TEST_RETENTIONS = "1s:30m"
READINESS_METRIC = "ops.readiness"


def render_url(base: str, targets: list[str], **params: str) -> str:
    """A Graphite ``/render`` URL for ``targets`` (``params``: from, format, width, ...)."""
    query = [("target", t) for t in targets] + list(params.items())
    return f"{base}/render?{urllib.parse.urlencode(query)}"


def fetch_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


#: UDP port the statsd daemon repeats every raw packet to (nobody listening = dropped).
REPEATER_PORT = 8127


class MetricsStack(Supervisor):
    """statsd + carbon-cache + graphite-web on 127.0.0.1; safe to call repeatedly."""

    def __init__(self, settings: Settings, graphite_port: int = 8085,
                 carbon_port: int = 2003, carbon_pickle_port: int = 2004,
                 carbon_query_port: int = 7002, statsd_mgmt_port: int = 8126,
                 flush_interval_ms: int = 1000, repeater_port: int = REPEATER_PORT) -> None:
        self.settings = settings
        super().__init__(Path(settings.local_dir), [])
        self.home = self.root / "metrics"
        self.conf = self.home / "conf"
        self.whisper = self.home / "whisper"
        self.graphite_storage = self.home / "graphite"
        self.statsd_dir = self.home / "statsd"
        self.graphite_port = graphite_port
        self.carbon_port = carbon_port
        self.carbon_pickle_port = carbon_pickle_port
        self.carbon_query_port = carbon_query_port
        self.statsd_port = settings.statsd_port
        self.statsd_mgmt_port = statsd_mgmt_port
        self.flush_interval_ms = flush_interval_ms
        self.repeater_port = repeater_port
        self.graphite_url = f"http://127.0.0.1:{graphite_port}"
        self.timings: dict[str, float] = {}
        if settings.statsd_host not in ("127.0.0.1", "localhost"):
            raise StackError(f"statsd_host is {settings.statsd_host!r}: the local metrics "
                             "stack only runs on 127.0.0.1")
        self.services = self._daemons()

    # --- daemons ----------------------------------------------------------------------
    def _daemons(self) -> list[Service]:
        def d(name: str, url: str, ports: list[tuple[str, int]], check: Callable[[], None],
              cmd: Callable[[], list[str]], env: Callable[[], dict[str, str]], hint: str,
              timeout: float = 30.0) -> Service:
            cwd = self._statsd_pkg() if name == "statsd" else self.home
            return Service(name, url, cmd, check, hint, self.logs / f"{name}.log",
                           self.run / f"{name}.pid", ports, env=env, cwd=cwd,
                           start_timeout_s=timeout)

        return [
            d("carbon", f"tcp://127.0.0.1:{self.carbon_port}",
              [("tcp", self.carbon_port), ("tcp", self.carbon_pickle_port),
               ("tcp", self.carbon_query_port)],
              self._check_carbon, self._carbon_cmd, self._python_env, "carbon-cache"),
            d("graphite-web", self.graphite_url, [("tcp", self.graphite_port)],
              self._check_graphite, self._graphite_cmd, self._python_env, "runserver", 60),
            d("statsd", f"udp://127.0.0.1:{self.statsd_port}",
              [("udp", self.statsd_port), ("tcp", self.statsd_mgmt_port)],
              self._check_statsd, self._statsd_cmd, lambda: dict(os.environ), "statsd"),
        ]

    def _python_env(self) -> dict[str, str]:
        """Environment for the Debian python daemons: no venv, our settings module."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PYTHONPATH=str(self.conf), DJANGO_SETTINGS_MODULE="graphite.settings",
                   GRAPHITE_SETTINGS_MODULE="recsys_graphite_settings",
                   PYTHONUNBUFFERED="1", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def _carbon_cmd(self) -> list[str]:
        return [SYSTEM_PYTHON, "/usr/bin/carbon-cache", f"--config={self.conf / 'carbon.conf'}",
                f"--pidfile={self.home / 'carbon-cache.pid'}", f"--logdir={self.logs}",
                "--nodaemon", "start"]

    def _graphite_cmd(self) -> list[str]:
        return [SYSTEM_PYTHON, "-m", "django", "runserver", "--noreload",
                f"127.0.0.1:{self.graphite_port}"]

    def _statsd_cmd(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise StackError("statsd: `node` not found (apt-get install -y nodejs npm)")
        return [node, str(self._statsd_pkg() / "stats.js"), str(self.conf / "statsd.js")]

    def _statsd_pkg(self) -> Path:
        return self.statsd_dir / "node_modules" / "statsd"

    def _check_carbon(self) -> None:
        with socket.create_connection(("127.0.0.1", self.carbon_port), timeout=1.0):
            pass

    def _check_graphite(self) -> None:
        data = fetch_json(f"{self.graphite_url}/metrics/find?query=*", timeout=2.0)
        if not isinstance(data, list):
            raise StackError("graphite-web: /metrics/find did not return a JSON list")

    def _check_statsd(self) -> None:
        with socket.create_connection(("127.0.0.1", self.statsd_mgmt_port), timeout=1.0) as s:
            s.sendall(b"health\n")
            reply = s.recv(256)
        if b"health: up" not in reply:
            raise StackError(f"statsd admin port answered {reply[:60]!r}")

    # --- installation -------------------------------------------------------------------
    def missing_debian_packages(self) -> list[str]:
        missing = []
        for pkg in DEBIAN_PACKAGES:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                                 capture_output=True, text=True, check=False)
            if "install ok installed" not in out.stdout:
                missing.append(pkg)
        return missing

    def install(self) -> dict[str, float]:
        """Install what is missing; returns seconds spent per step (empty: nothing to do)."""
        spent: dict[str, float] = {}
        self.logs.mkdir(parents=True, exist_ok=True)
        missing = self.missing_debian_packages()
        if shutil.which("npm") is None:
            missing += ["nodejs", "npm"]
        if missing:
            t0 = time.monotonic()
            log.info("installing Debian packages %s (apt-get)", " ".join(missing))
            self._run_logged(["apt-get", "install", "-y", "-q", *missing],
                             self.logs / "metrics-install.log", "apt-get install",
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            spent["apt"] = time.monotonic() - t0
        if self._installed_statsd_version() != STATSD_VERSION:
            t0 = time.monotonic()
            self.statsd_dir.mkdir(parents=True, exist_ok=True)
            log.info("installing statsd %s with npm into %s", STATSD_VERSION, self.statsd_dir)
            self._run_logged(["npm", "install", "--no-audit", "--no-fund", "--omit=optional",
                              "--prefix", str(self.statsd_dir), f"statsd@{STATSD_VERSION}"],
                             self.logs / "metrics-install.log", "npm install statsd")
            spent["npm"] = time.monotonic() - t0
        return spent

    def _installed_statsd_version(self) -> str | None:
        try:
            return str(json.loads((self._statsd_pkg() / "package.json").read_text())["version"])
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def _run_logged(self, cmd: list[str], log_file: Path, what: str,
                    env: dict[str, str] | None = None) -> None:
        with log_file.open("ab") as out:
            out.write(f"\n--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
            out.flush()
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, check=False).returncode
        if rc != 0:
            raise StackError(f"{what} failed (exit {rc}); see {log_file}:\n{_tail(log_file)}")

    # --- configuration --------------------------------------------------------------------
    def write_config(self) -> None:
        """(Re)write every generated config file; cheap, so done on each ``up``."""
        for folder in (self.conf, self.whisper, self.graphite_storage / "log",
                       self.logs, self.run):
            folder.mkdir(parents=True, exist_ok=True)
        (self.conf / "carbon.conf").write_text(self._carbon_conf())
        (self.conf / "storage-schemas.conf").write_text(self._schemas_conf())
        (self.conf / "storage-aggregation.conf").write_text(_AGGREGATION_CONF)
        (self.conf / "recsys_graphite_settings.py").write_text(self._graphite_settings())
        (self.conf / "statsd.js").write_text(self._statsd_conf())

    def _carbon_conf(self) -> str:
        return f"""# generated by devstack/metrics_stack.py
[cache]
STORAGE_DIR = {self.home}/
LOCAL_DATA_DIR = {self.whisper}/
WHITELISTS_DIR = {self.home}/lists/
CONF_DIR = {self.conf}/
LOG_DIR = {self.logs}/
PID_DIR = {self.home}/
DATABASE = whisper
ENABLE_LOGROTATION = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 2000
MAX_CREATES_PER_MINUTE = inf
MIN_TIMESTAMP_RESOLUTION = 1
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {self.carbon_port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {self.carbon_pickle_port}
USE_INSECURE_UNPICKLER = False
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {self.carbon_query_port}
USE_FLOW_CONTROL = True
LOG_UPDATES = False
LOG_CREATES = False
LOG_CACHE_HITS = False
LOG_CACHE_QUEUE_SORTS = False
LOG_LISTENER_CONN_SUCCESS = False
ENABLE_TAGS = False
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = False
WHISPER_FALLOCATE_CREATE = False
CARBON_METRIC_INTERVAL = 60
"""

    def _schemas_conf(self) -> str:
        return f"""# generated by devstack/metrics_stack.py; first match wins
[carbon]
pattern = ^carbon\\.
retentions = 60s:1d

[test_sessions]
pattern = ^stats(_counts)?\\.(counters|timers|gauges)\\.recsys-test-
retentions = {TEST_RETENTIONS}

[default]
pattern = .*
retentions = {RETENTIONS}
"""

    def _graphite_settings(self) -> str:
        key_file = self.graphite_storage / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_hex(32))
        return f"""# generated by devstack/metrics_stack.py (GRAPHITE_SETTINGS_MODULE)
SECRET_KEY = {key_file.read_text().strip()!r}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TIME_ZONE = "UTC"
LOG_ROTATION = False
DEFAULT_XFILES_FACTOR = 0
GRAPHITE_ROOT = "/usr/share/graphite-web"
STATIC_ROOT = "/usr/share/graphite-web/static"
CONF_DIR = {str(self.conf)!r}
STORAGE_DIR = {str(self.graphite_storage)!r}
LOG_DIR = {str(self.graphite_storage / 'log')!r}
INDEX_FILE = {str(self.graphite_storage / 'search_index')!r}
WHISPER_DIR = {str(self.whisper)!r}
STANDARD_DIRS = [{str(self.whisper)!r}]
CARBONLINK_HOSTS = ["127.0.0.1:{self.carbon_query_port}:a"]
CARBONLINK_TIMEOUT = 1.0
DEFAULT_CACHE_DURATION = 0
FIND_CACHE_DURATION = 0
DATABASES = {{"default": {{"NAME": {str(self.graphite_storage / 'graphite.db')!r},
                         "ENGINE": "django.db.backends.sqlite3"}}}}
FUNCTION_PLUGINS = []
"""

    def _statsd_conf(self) -> str:
        conf = {
            "address": "127.0.0.1", "port": self.statsd_port,
            "mgmt_address": "127.0.0.1", "mgmt_port": self.statsd_mgmt_port,
            "graphiteHost": "127.0.0.1", "graphitePort": self.carbon_port,
            "backends": ["./backends/graphite", "./backends/repeater"],
            # Raw packets are repeated to this port too, so a benchmark or the demo can
            # compute exact percentiles while Graphite keeps its per-flush aggregates.
            "repeater": [{"host": "127.0.0.1", "port": self.repeater_port}],
            "flushInterval": self.flush_interval_ms,
            "percentThreshold": [90, 99], "deleteIdleStats": True,
            "graphite": {"legacyNamespace": False, "globalPrefix": "stats"},
        }
        return "// generated by devstack/metrics_stack.py\n(" + json.dumps(conf, indent=1) + ")\n"

    def _init_graphite_db(self) -> None:
        marker = self.graphite_storage / "graphite.db"
        if marker.exists() and marker.stat().st_size > 0:  # empty: a migrate cut short
            return
        log.info("graphite-web: initialising sqlite DB %s", marker)
        self._run_logged([SYSTEM_PYTHON, "-m", "django", "migrate", "--noinput", "--run-syncdb"],
                         self.logs / "graphite-web.log", "graphite-web migrate",
                         env=self._python_env())

    # --- lifecycle ------------------------------------------------------------------------
    def up(self, names: list[str] | None = None, timeout_s: float = 30.0) -> list[str]:
        """Install if needed, start what does not answer, prove a statsd→Graphite round trip.

        Returns the daemons started; :attr:`timings` holds the seconds spent (``apt``/``npm``
        when they ran, ``start``, ``round_trip``).
        """
        self.timings = self.install()
        self.write_config()
        t0 = time.monotonic()
        started = super().up(names)
        self.timings["start"] = time.monotonic() - t0
        t1 = time.monotonic()
        self.round_trip(timeout_s)
        self.timings["round_trip"] = time.monotonic() - t1
        return started

    def before_start(self, service: Service) -> None:
        if service.name == "graphite-web":
            self._init_graphite_db()

    def round_trip(self, timeout_s: float = 30.0) -> float:
        """Send a counter to statsd until Graphite serves it; returns the seconds it took."""
        name = f"{self.settings.statsd_prefix}.{READINESS_METRIC}"
        target = f"stats.counters.{name}.count"
        url = render_url(self.graphite_url, [target], format="json", **{"from": "-2min"})
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        last = "no answer yet"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while time.monotonic() < deadline:
                sent_at = time.time()
                sock.sendto(f"{name}:1|c".encode(), ("127.0.0.1", self.statsd_port))
                poll_until = min(deadline, time.monotonic() + 3.0)
                while time.monotonic() < poll_until:
                    time.sleep(0.25)
                    try:
                        series = fetch_json(url)
                    except (OSError, ValueError) as exc:
                        last = f"graphite-web: {type(exc).__name__}: {exc}"
                        continue
                    points = [p for s in series for p in s.get("datapoints", [])]
                    if any(v and ts >= int(sent_at) - 1 for v, ts in points):
                        return time.monotonic() - t0
                    last = f"{target} not in Graphite yet"
        raise StackError(
            f"metrics round trip failed after {timeout_s:.0f}s: sent {name} to statsd "
            f"udp://127.0.0.1:{self.statsd_port}, {last} at {self.graphite_url}; logs: "
            + ", ".join(str(d.log_file) for d in self.services))

_AGGREGATION_CONF = """# generated by devstack/metrics_stack.py: how 1 s points roll up into 1 min
[min]
pattern = \\.lower(_\\d+)?$
xFilesFactor = 0
aggregationMethod = min

[max]
pattern = \\.upper(_\\d+)?$
xFilesFactor = 0
aggregationMethod = max

[sum]
pattern = \\.(count|sum|sum_squares)(_\\d+)?$
xFilesFactor = 0
aggregationMethod = sum

[default_average]
pattern = .*
xFilesFactor = 0
aggregationMethod = average
"""
