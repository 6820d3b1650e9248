"""The FAISS service: a Falcon ASGI app over one :class:`~faiss_server.service.IndexService`.

ASGI (uvicorn, one worker) because the index lives in this process's memory: one process
is the single writer, searches run inline (sub-millisecond, FAISS code) and version builds
run in a thread so searches keep being answered on the old index meanwhile.

Endpoints (JSON; see ``/openapi.json``):

- ``POST /v1/search`` ``{"vectors": [[...]], "k": 10, "exclude": ["id", ...]}``
- ``GET /v1/items/{item_id}/similar?k=10[&exclude=a,b]``
- ``GET|PUT|DELETE /v1/items/{item_id}`` (PUT body ``{"vector": [...]}``) — writes need key
- ``GET /v1/index`` — version, size, parameters
- ``POST /v1/index/versions`` — load a new version (JSON ``{"version", "path"}`` or an
  ``application/octet-stream`` ``.npz`` upload with ``?version=``) and swap it in — key
- ``POST /v1/index/snapshot`` — save the current index to disk — key
- ``GET /health``, ``GET /openapi.json``

statsd (prefix ``{statsd_prefix}.faiss``): ``requests.<resource>.<method>.<status>``,
``latency.<resource>.<method>`` (ms), ``index.size`` (gauge), ``index.swaps`` (counter).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import zipfile
from pathlib import Path
from typing import Any, TypeVar, cast

import falcon
import falcon.asgi
import msgspec

from common.http_errors import add_domain_error_handlers
from common.http_metrics import MetricsMiddleware
from common.http_request import checked_id, int_param, read_body, use_raw_path_ids
from faiss_server.config import FaissConfig
from faiss_server.index import set_search_threads
from faiss_server.openapi import openapi_document
from faiss_server.protocol import (
    HitOut,
    SearchBody,
    SearchOut,
    SimilarOut,
    UpsertBody,
    VersionRef,
    read_npz,
)
from faiss_server.service import IndexService

log = logging.getLogger(__name__)
T = TypeVar("T")

API_KEY_HEADER = "X-API-Key"


def bad(description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="Invalid request", description=description)


_json_enc = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (SearchBody, UpsertBody, VersionRef)}


async def read_json(req: falcon.asgi.Request, limit: int, kind: type[T]) -> T:
    """The body decoded into ``kind`` (msgspec: ~5x faster than ``json.loads`` on a
    64-float search body, and typed), or a 400 naming the field."""
    data = await read_body(req, limit)
    try:
        return cast(T, _decoders[kind].decode(data))
    except msgspec.ValidationError as exc:
        raise bad(f"invalid body: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise bad(f"the body is not valid JSON: {exc}") from exc
    except RecursionError:  # thousands of nested arrays in a field that is skipped
        raise bad("the body is nested too deeply") from None


def check_k(k: int, max_k: int) -> int:
    if not 1 <= k <= max_k:
        raise bad(f"k must be an integer in 1..{max_k}")
    return k


def check_ids(value: list[str], name: str, limit: int) -> list[str]:
    if len(value) > limit:
        raise bad(f"{name} may hold at most {limit} ids")
    return value


def check_boosts(boosts: list[dict[str, float]], n_vectors: int,
                 limit: int) -> list[dict[str, float]]:
    """``boosts`` as the schema says: none, or one object per query vector, each of at
    most ``limit`` ids with finite values ≥ 0 (the exactness of a boosted search rests
    on no boost being negative)."""
    if boosts and len(boosts) != n_vectors:
        raise bad(f"boosts must hold one object per query vector ({n_vectors}), "
                  f"got {len(boosts)}")
    for row in boosts:
        if len(row) > limit:
            raise bad(f"a boosts object may hold at most {limit} ids")
        for item, value in row.items():
            if not (math.isfinite(value) and value >= 0):
                raise bad(f"boost of {item!r} must be a finite number >= 0, got {value}")
    return boosts


def require_api_key(req: Any, resp: Any, resource: Any, params: Any) -> None:
    """Falcon ``before`` hook: the write endpoints need ``X-API-Key``."""
    given = req.get_header(API_KEY_HEADER) or ""
    if not hmac.compare_digest(given.encode(), resource.api_key.encode()):
        raise falcon.HTTPUnauthorized(
            title="Unauthorized",
            description=f"a valid {API_KEY_HEADER} header is required for this endpoint",
            challenges=["ApiKey"],
        )


async def require_api_key_async(req: Any, resp: Any, resource: Any, params: Any) -> None:
    require_api_key(req, resp, resource, params)


class _Base:
    def __init__(self, service: IndexService, config: FaissConfig, statsd: Any = None) -> None:
        self.service = service
        self.config = config
        self.api_key = config.api_key
        self.statsd = statsd


class Search(_Base):
    metric_name = "search"

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        cfg = self.config
        body = await read_json(req, cfg.max_json_bytes, SearchBody)
        vectors = body.vectors
        if not 1 <= len(vectors) <= cfg.max_batch:
            raise bad(f"vectors must be a list of 1..{cfg.max_batch} vectors")
        k = check_k(body.k, cfg.max_k)
        exclude = check_ids(body.exclude, "exclude", cfg.max_exclude)
        boosts = check_boosts(body.boosts, len(vectors), cfg.max_boosts)
        only = check_ids(body.only, "only", cfg.max_only)
        try:
            version, results = self.service.search(vectors, k, exclude, boosts, only)
        except (ValueError, TypeError) as exc:
            raise bad(str(exc)) from exc
        # Hot path of the recommender API: encoded with msgspec, not ``resp.media``.
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _json_enc.encode(SearchOut(
            version, [[HitOut(i, s) for i, s in hits] for hits in results], k))


class SimilarItems(_Base):
    metric_name = "similar"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     item_id: str) -> None:
        checked_id(item_id)
        k = int_param(req, "k", 10, 1, self.config.max_k)
        # Comma form (``exclude=a,b``) and repeated parameters both: the app splits query
        # values on unencoded commas (``auto_parse_qs_csv``); an id holding a comma is
        # sent percent-encoded (``%2C``), which is not split.
        exclude = check_ids(req.get_param_as_list("exclude", default=[]), "exclude",
                            self.config.max_exclude)
        version, hits = self.service.similar(item_id, k, exclude)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _json_enc.encode(SimilarOut(version, [HitOut(i, s) for i, s in hits],
                                                item_id))


class Item(_Base):
    metric_name = "item"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     item_id: str) -> None:
        checked_id(item_id)
        idx = self.service.current
        resp.media = {"id": item_id, "version": idx.version,
                      "vector": idx.vector(item_id)[0].tolist()}

    @falcon.before(require_api_key_async)
    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     item_id: str) -> None:
        checked_id(item_id)
        body = await read_json(req, self.config.max_json_bytes, UpsertBody)
        try:
            version = self.service.upsert(item_id, body.vector)
        except (ValueError, TypeError) as exc:
            raise bad(str(exc)) from exc
        resp.media = {"id": item_id, "version": version, "size": len(self.service.current)}

    @falcon.before(require_api_key_async)
    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        item_id: str) -> None:
        checked_id(item_id)
        version = self.service.delete(item_id)
        resp.media = {"id": item_id, "deleted": True, "version": version,
                      "size": len(self.service.current)}


class IndexInfo(_Base):
    metric_name = "index"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = self.service.info()


class IndexVersions(_Base):
    """Load a complete new version and swap it in (the request returns after the swap)."""

    metric_name = "versions"

    def _allowed_path(self, raw: Any) -> Path:
        if not isinstance(raw, str) or not raw:
            raise bad("path must be a non-empty string")
        try:
            path = Path(raw).expanduser().resolve()
        except (RuntimeError, ValueError, OSError) as exc:  # "~nobody/x", NUL bytes, ...
            raise bad(f"path {raw!r} cannot be resolved: {exc}") from None
        roots = [Path(r).expanduser().resolve() for r in self.config.load_roots]
        if not any(path.is_relative_to(r) for r in roots):
            raise bad(f"path must be inside one of {[str(r) for r in roots]}")
        if not path.is_file():
            raise falcon.HTTPNotFound(title="File not found", description=f"no file at {path}")
        return path

    @falcon.before(require_api_key_async)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if (req.content_type or "").startswith("application/json"):
            ref = await read_json(req, self.config.max_json_bytes, VersionRef)
            version: str | list[str] | None = ref.version
            source: bytes | Path = self._allowed_path(ref.path)
        else:
            # A list when given twice or with a comma (query values are split): 400 below.
            version = req.params.get("version")
            source = await read_body(req, self.config.max_upload_bytes)
        if not isinstance(version, str):
            raise bad("version is required (a string)")
        try:
            ids, vectors = await asyncio.to_thread(read_npz, source,
                                                   self.config.max_npz_bytes)
            info = await asyncio.to_thread(self.service.load_version, version, ids, vectors)
        except (ValueError, TypeError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise bad(f"cannot load version: {exc}") from exc
        if self.statsd is not None:
            self.statsd.incr("index.swaps")
            self.statsd.gauge("index.size", info["size"])
        resp.status = falcon.HTTP_201
        resp.media = info


class Snapshot(_Base):
    metric_name = "snapshot"

    @falcon.before(require_api_key_async)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = await asyncio.to_thread(self.service.snapshot)


class Health(_Base):
    metric_name = "health"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        info = self.service.info()
        ready = info["version"] is not None
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ok" if ready else "not_ready", "version": info["version"],
                      "size": info["size"]}


class OpenAPI:
    metric_name = "openapi"

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = self.document


class Startup:
    """Falcon middleware: the service's own start-up, whatever server runs the app
    (``scripts.serve faiss`` or ``uvicorn faiss_server.asgi:app``; ASGI lifespan)."""

    def __init__(self, config: FaissConfig) -> None:
        self.config = config

    async def process_startup(self, scope: Any, event: Any) -> None:
        # Searches run on the event-loop thread (this one) one query at a time: no OpenMP
        # team for them. Per thread: version builds (worker threads) still use every core.
        set_search_threads(self.config.omp_threads)


def create_app(
    config: FaissConfig, service: IndexService | None = None, statsd: Any = None
) -> falcon.asgi.App:
    """The service app. ``service`` defaults to one started from ``config`` (loads the saved
    version from ``config.data_dir``, reading files only — nothing connects)."""
    if service is None:
        service = IndexService(config.spec, config.data_dir, config.keep_versions)
        service.start()
    middleware: list[Any] = [Startup(config), MetricsMiddleware(statsd)]
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.auto_parse_qs_csv = True  # exclude=a,b (see SimilarItems)
    use_raw_path_ids(app)
    add_domain_error_handlers(app)
    args = (service, config, statsd)
    app.add_route("/v1/search", Search(*args))
    app.add_route("/v1/items/{item_id:id}/similar", SimilarItems(*args))
    app.add_route("/v1/items/{item_id:id}", Item(*args))
    app.add_route("/v1/index", IndexInfo(*args))
    app.add_route("/v1/index/versions", IndexVersions(*args))
    app.add_route("/v1/index/snapshot", Snapshot(*args))
    app.add_route("/health", Health(*args))
    app.add_route("/openapi.json", OpenAPI(openapi_document(config)))
    return app
