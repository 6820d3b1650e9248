"""A statsd UDP listener for benchmarks and the demo: counters summed, timings kept.

It hears exactly the packets an operator's statsd daemon would, so figures printed by
benchmarks are the ones the dashboards show. The receive buffer is enlarged (8 MB):
with the default, bursts of packets were dropped.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict


class StatsdListener:
    """Collects statsd packets on a UDP port (counters summed, timings kept)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.counters: dict[str, float] = defaultdict(float)
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.gauges: dict[str, list[float]] = defaultdict(list)
        self.counter_times: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> StatsdListener:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            now = time.perf_counter()
            with self._lock:
                for line in data.decode(errors="replace").splitlines():
                    name, _, rest = line.partition(":")
                    value, _, kind = rest.partition("|")
                    try:
                        v = float(value)
                    except ValueError:
                        continue
                    if kind.startswith("c"):
                        self.counters[name] += v
                        self.counter_times[name] = now
                    elif kind.startswith("ms"):
                        self.timings[name].append(v)
                    elif kind.startswith("g"):
                        self.gauges[name].append(v)

    def counter(self, suffix: str) -> float:
        with self._lock:
            return sum(v for k, v in self.counters.items() if k.endswith(suffix))

    def gauge_min(self, suffix: str) -> float | None:
        """Smallest value any gauge ending in ``suffix`` took (None if never sent)."""
        with self._lock:
            return min((v for k, vs in self.gauges.items() if k.endswith(suffix) for v in vs),
                       default=None)

    def last_time(self, suffix: str) -> float:
        with self._lock:
            return max((t for k, t in self.counter_times.items() if k.endswith(suffix)),
                       default=0.0)

    def take_timings(self, suffix: str) -> list[float]:
        with self._lock:
            out: list[float] = []
            for k in list(self.timings):
                if k.endswith(suffix):
                    out.extend(self.timings.pop(k))
            return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
