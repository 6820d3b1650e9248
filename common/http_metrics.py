"""statsd request metrics for the Falcon services (WSGI and ASGI alike).

Per request, with ``name = <resource.metric_name>.<method>`` (``unrouted`` if no route):

- ``requests.<name>.<status code>`` — counter
- ``latency.<name>`` — timer, milliseconds

The statsd client carries the process prefix (``{statsd_prefix}.api`` / ``.faiss``).
"""

from __future__ import annotations

import time
from typing import Any


class MetricsMiddleware:
    """Counts and times every request; ``statsd`` may be ``None`` (tests)."""

    def __init__(self, statsd: Any | None) -> None:
        self.statsd = statsd

    def process_request(self, req: Any, resp: Any) -> None:
        req.context.t0 = time.perf_counter()

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        if self.statsd is None:
            return
        ms = (time.perf_counter() - getattr(req.context, "t0", time.perf_counter())) * 1000
        base = getattr(resource, "metric_name", None) if resource is not None else None
        name = f"{base}.{req.method.lower()}" if base else "unrouted"
        status = str(resp.status)[:3]
        pipe = self.statsd.pipeline()
        pipe.incr(f"requests.{name}.{status}")
        pipe.timing(f"latency.{name}", ms)
        pipe.send()

    async def process_request_async(self, req: Any, resp: Any) -> None:
        self.process_request(req, resp)

    async def process_response_async(
        self, req: Any, resp: Any, resource: Any, req_succeeded: bool
    ) -> None:
        self.process_response(req, resp, resource, req_succeeded)
