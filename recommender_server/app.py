"""The recommender API: Falcon ASGI resources over the async ``RecommendationService``.

ASGI only (``falcon.asgi`` under uvicorn + httptools + uvloop): the responders are
coroutines over async clients, so a worker process overlaps many requests instead of
serving one at a time; run one worker per core (``python -m scripts.serve api``).
Background work (the user change stream, cache warm-up) starts and stops with the ASGI
lifespan (:class:`Lifespan`). Responses are encoded with ``msgspec`` (~5x faster than
``json.dumps`` for a 10-item answer).

Endpoints: ``GET /v1/recommendations?user_id=&k=``,
``GET /v1/items/{item_id}/similar?k=&source=embedding|cooc``,
``GET /v1/popular?k=`` (all three also take attribute filters, e.g.
``&genre=Comedy&year_min=1990``: :mod:`recommender_server.filters`), ``GET /health``,
``GET /ready``, ``GET /openapi.json``.
Metric names: see :mod:`recommender_server.recommend` and :mod:`recommender_server.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping

import falcon
import falcon.asgi
import msgspec
from falcon.asgi import Request, Response

from common.gc_tuning import freeze_startup_heap, tune_gc
from common.http_errors import add_domain_error_handlers
from common.http_request import BodyLimit, checked_id, choice_param, int_param, use_raw_path_ids
from recommender_server.config import ApiConfig
from recommender_server.deps import Dependencies
from recommender_server.filters import AttributeFilter, BadFilter, parse_filters
from recommender_server.metrics import BatchedMetricsMiddleware
from recommender_server.openapi import openapi_document
from recommender_server.ports import Body
from recommender_server.ranking import ORDERS
from recommender_server.recommend import SIMILAR_SOURCES, RecommendationService

_encode = msgspec.json.Encoder().encode


def _json(resp: Response, body: Body) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encode(body)


class _Base:
    def __init__(self, rec: RecommendationService) -> None:
        self.rec = rec

    #: The endpoint's own query parameters; every other one is an attribute filter.
    own_params: frozenset[str] = frozenset({"k"})

    def _k(self, req: Request) -> int:
        return int_param(req, "k", 10, 1, self.rec.config.max_k)

    def _filter(self, req: Request) -> AttributeFilter:
        """The request's attribute filter (:mod:`recommender_server.filters`), or 400."""
        try:
            return parse_filters(req.params, self.own_params)
        except BadFilter as exc:
            raise falcon.HTTPInvalidParam(str(exc), exc.param) from None


class Recommendations(_Base):
    metric_name = "recommendations"
    own_params = frozenset({"k", "user_id", "explain", "order"})

    async def on_get(self, req: Request, resp: Response) -> None:
        user_id = checked_id(req.get_param("user_id", required=True), "user_id")
        explain = bool(req.get_param_as_bool("explain", default=False))
        order = choice_param(req, "order", ORDERS, "ranked")
        _json(resp, await self.rec.recommend(user_id, self._k(req), self._filter(req),
                                             explain=explain, order=order))


class SimilarItems(_Base):
    metric_name = "similar"
    own_params = frozenset({"k", "source"})

    async def on_get(self, req: Request, resp: Response, item_id: str) -> None:
        source = choice_param(req, "source", SIMILAR_SOURCES, "embedding")
        _json(resp, await self.rec.similar(checked_id(item_id), self._k(req), source,
                                           self._filter(req)))


class Popular(_Base):
    metric_name = "popular"

    async def on_get(self, req: Request, resp: Response) -> None:
        _json(resp, await self.rec.popular(self._k(req), self._filter(req)))


class Health(_Base):
    metric_name = "health"

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = {"status": "ok"}


class Ready(_Base):
    metric_name = "ready"

    async def on_get(self, req: Request, resp: Response) -> None:
        ok, checks = await self.rec.readiness()
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ready" if ok else "not_ready", "checks": checks}


class OpenAPI:
    metric_name = "openapi"

    def __init__(self, document: dict[str, object]) -> None:
        self.document = document

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = self.document


class Lifespan:
    """Falcon middleware: start/stop the dependencies' background tasks with the app."""

    def __init__(self, deps: Dependencies, rec: RecommendationService,
                 metrics: BatchedMetricsMiddleware, gc_gen0_threshold: int = 0) -> None:
        self.deps, self.rec, self.metrics = deps, rec, metrics
        self.gc_gen0_threshold = gc_gen0_threshold

    async def process_startup(self, scope: Mapping[str, object],
                              event: Mapping[str, object]) -> None:
        tune_gc(self.gc_gen0_threshold)  # per worker process (common/gc_tuning.py)
        await self.deps.start()
        freeze_startup_heap()

    async def process_shutdown(self, scope: Mapping[str, object],
                               event: Mapping[str, object]) -> None:
        self.rec.flush_metrics(force=True)
        self.metrics.flush()
        await self.deps.stop()


def create_app(config: ApiConfig, deps: Dependencies | None = None) -> falcon.asgi.App:
    """The API app; ``deps`` defaults to real clients from ``config.settings``."""
    deps = deps or Dependencies.build(config)
    rec = RecommendationService(config, deps)
    metrics = BatchedMetricsMiddleware(deps.statsd, config.metrics_flush_s,
                                       config.metrics_timing_rate)
    app = falcon.asgi.App()
    # One call each (same order as a list): falcon's middleware type is a union of
    # protocols, and a list of three different classes only joins to ``object``.
    app.add_middleware(Lifespan(deps, rec, metrics, config.settings.gc_gen0_threshold))
    app.add_middleware(metrics)
    app.add_middleware(BodyLimit(config.max_body_bytes))
    use_raw_path_ids(app)
    add_domain_error_handlers(app)
    routes = {
        "/v1/recommendations": Recommendations(rec),
        "/v1/items/{item_id:id}/similar": SimilarItems(rec),
        "/v1/popular": Popular(rec),
        "/health": Health(rec),
        "/ready": Ready(rec),
        "/openapi.json": OpenAPI(openapi_document(config)),
    }
    for path, resource in routes.items():
        app.add_route(path, resource)
    return app
