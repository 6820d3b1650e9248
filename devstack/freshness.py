"""Click → state the API serves from, measured from outside the worker while it is loaded.

Why: the worker's own ``latency.click_to_vector_ms`` says when it wrote, not when a
reader could see it. :class:`FreshnessProbe` clicks as brand-new users (``probe-…``, one
click each, so the expected version is known: ``n_events`` 1) at a fixed rate, and polls
their hot records with the key and decoder the API uses (:mod:`common.hot_users`), all
outstanding probes in one ``MGET`` every few milliseconds. A probe counts from just
before its send to the first poll that sees the record, so the figure includes the
broker, any consumer lag, the worker's batch and the Redis write.
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np

from common.clients import redis_client
from common.events import interaction_json
from common.hot_users import HotUsers
from common.settings import Settings
from common.stores import RedisKeys
from devstack.processes import SyncProducer


class FreshnessProbe:
    """Background probes (one thread sends, one polls); :meth:`take` returns latencies."""

    def __init__(self, settings: Settings, items: list[str], rate_per_s: float = 50.0,
                 poll_s: float = 0.005, timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.items = items
        self.interval_s = 1.0 / rate_per_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.run = uuid.uuid4().hex[:6]
        self._sent: dict[str, float] = {}  # user → perf_counter before the send
        self._latencies: list[float] = []
        self.timeouts = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sending = threading.Event()
        self._sending.set()
        self._threads = [threading.Thread(target=self._send_loop, daemon=True),
                         threading.Thread(target=self._poll_loop, daemon=True)]

    def start(self) -> FreshnessProbe:
        self._producer = SyncProducer(self.settings)
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._producer.close()

    def pause(self) -> None:
        """Stop sending (outstanding probes are still polled); :meth:`resume` restarts."""
        self._sending.clear()

    def resume(self) -> None:
        self._sending.set()

    def take(self) -> list[float]:
        """Latencies (s) seen since the last call."""
        with self._lock:
            out, self._latencies = self._latencies, []
        return out

    def wait_outstanding(self, timeout_s: float = 30.0) -> None:
        """Wait until every probe sent so far was seen or timed out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._sent:
                    return
            time.sleep(0.01)

    def _send_loop(self) -> None:
        rng = np.random.default_rng()
        k = 0
        next_at = time.perf_counter()
        while not self._stop.is_set():
            if not self._sending.wait(0.1):
                next_at = time.perf_counter()
                continue
            user = f"probe-{self.run}-{k}"
            item = self.items[int(rng.integers(len(self.items)))]
            t0 = time.perf_counter()
            with self._lock:
                self._sent[user] = t0
            self._producer.send(self.settings.topic_interactions, user,
                                interaction_json(user, item, "click", int(time.time() * 1000)))
            self.sent += 1
            k += 1
            next_at += self.interval_s
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def _poll_loop(self) -> None:
        r = redis_client(self.settings)
        hot = HotUsers(r, RedisKeys(self.settings.redis_prefix), ttl_s=1.0)  # reads only
        try:
            while not self._stop.is_set():
                with self._lock:
                    waiting = dict(self._sent)
                if waiting:
                    seen = hot.get_many(list(waiting))
                    now = time.perf_counter()
                    with self._lock:
                        for user, t0 in waiting.items():
                            if user in seen and seen[user].n_events >= 1:
                                self._latencies.append(now - t0)
                                self._sent.pop(user, None)
                            elif now - t0 > self.timeout_s:
                                self.timeouts += 1
                                self._sent.pop(user, None)
                time.sleep(self.poll_s)
        finally:
            r.close()
