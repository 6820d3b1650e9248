"""The recommender API: Falcon resources over :class:`~recommender_server.recommend.Recommender`.

Resources are written once, synchronously (the clients under them — pymongo, redis-py,
the FAISS client — are blocking). ``create_app(config, deps)`` serves them as WSGI
(gunicorn); ``create_app(config, deps, asgi=True)`` wraps each responder in a coroutine
for uvicorn + httptools + uvloop. Inside a uvicorn worker the blocking calls run inline,
one request at a time per worker process, like a gunicorn sync worker but with a faster
HTTP parser and keep-alive; dependency timeouts (≤ 250 ms) and breakers bound the stall.

Endpoints: ``GET /v1/recommendations?user_id=&k=``, ``GET /v1/items/{item_id}/similar?k=``,
``GET /v1/popular?k=``, ``GET /health``, ``GET /ready``, ``GET /openapi.json``.
Metric names: see :mod:`recommender_server.recommend` and :mod:`common.http_metrics`.
"""

from __future__ import annotations

import functools
from typing import Any

import falcon
import falcon.asgi

from common.http_errors import add_domain_error_handlers
from common.http_metrics import MetricsMiddleware
from recommender_server.config import ApiConfig
from recommender_server.deps import Dependencies
from recommender_server.openapi import openapi_document
from recommender_server.recommend import Recommender

MAX_ID = 256


def _id_param(value: str | None, name: str) -> str:
    if not value or len(value) > MAX_ID:
        raise falcon.HTTPBadRequest(title="Invalid request",
                                    description=f"{name} must be 1..{MAX_ID} characters")
    return value


class _Base:
    def __init__(self, rec: Recommender) -> None:
        self.rec = rec

    def _k(self, req: Any) -> int:
        return req.get_param_as_int("k", min_value=1, max_value=self.rec.config.max_k,
                                    default=10)


class Recommendations(_Base):
    metric_name = "recommendations"

    def on_get(self, req: Any, resp: Any) -> None:
        user_id = _id_param(req.get_param("user_id", required=True), "user_id")
        resp.media = self.rec.recommend(user_id, self._k(req))


class SimilarItems(_Base):
    metric_name = "similar"

    def on_get(self, req: Any, resp: Any, item_id: str) -> None:
        resp.media = self.rec.similar(_id_param(item_id, "item_id"), self._k(req))


class Popular(_Base):
    metric_name = "popular"

    def on_get(self, req: Any, resp: Any) -> None:
        resp.media = self.rec.popular(self._k(req))


class Health(_Base):
    metric_name = "health"

    def on_get(self, req: Any, resp: Any) -> None:
        resp.media = {"status": "ok"}


class Ready(_Base):
    metric_name = "ready"

    def on_get(self, req: Any, resp: Any) -> None:
        ok, checks = self.rec.readiness()
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ready" if ok else "not_ready", "checks": checks}


class OpenAPI:
    metric_name = "openapi"

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: Any, resp: Any) -> None:
        resp.media = self.document


class _AsyncResource:
    """Exposes a sync resource's ``on_*`` responders as coroutines for ``falcon.asgi``."""

    def __init__(self, inner: Any) -> None:
        self.metric_name = inner.metric_name
        for name in dir(inner):
            if name.startswith("on_"):
                setattr(self, name, self._wrap(getattr(inner, name)))

    @staticmethod
    def _wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        async def responder(req: Any, resp: Any, **params: Any) -> None:
            fn(req, resp, **params)

        return responder


def create_app(config: ApiConfig, deps: Dependencies | None = None,
               asgi: bool = False) -> falcon.App:
    """The API app; ``deps`` defaults to real clients from ``config.settings``."""
    deps = deps or Dependencies.build(config)
    rec = Recommender(config, deps)
    app: falcon.App = (falcon.asgi.App if asgi else falcon.App)(
        middleware=[MetricsMiddleware(deps.statsd)])
    add_domain_error_handlers(app)
    routes = {
        "/v1/recommendations": Recommendations(rec),
        "/v1/items/{item_id}/similar": SimilarItems(rec),
        "/v1/popular": Popular(rec),
        "/health": Health(rec),
        "/ready": Ready(rec),
        "/openapi.json": OpenAPI(openapi_document(config)),
    }
    for path, resource in routes.items():
        app.add_route(path, _AsyncResource(resource) if asgi else resource)
    return app
