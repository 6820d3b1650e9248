"""Domain errors → HTTP, in one place for both Falcon services.

Every error body is JSON ``{"title": ..., "description": ..., "code": ...}``: domain
errors through :data:`DOMAIN_STATUS` (``code`` is the error class's
:attr:`~common.errors.RecsysError.code`), Falcon's own ``HTTPError`` s (400, 404 for an
unknown route, 413, ...) through :func:`serialize_http_error`, which fills a missing
description and a missing code (:func:`status_code_name`). A new
:class:`~common.errors.RecsysError` subclass gets a status here, not in a handler.

``code`` is what clients match on (``faiss_server/protocol.py``); titles are for people
and may change.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi
import msgspec

from common.errors import (
    BadEvent,
    IndexNotReady,
    RecsysError,
    ServiceUnavailable,
    UnknownItem,
    UnknownUser,
)

#: HTTP status and title for each domain error (first match in MRO order wins).
DOMAIN_STATUS: dict[type[RecsysError], tuple[str, str]] = {
    UnknownItem: (falcon.HTTP_404, "Unknown item"),
    UnknownUser: (falcon.HTTP_404, "Unknown user"),
    IndexNotReady: (falcon.HTTP_503, "Index not ready"),
    ServiceUnavailable: (falcon.HTTP_503, "Service unavailable"),
    BadEvent: (falcon.HTTP_400, "Bad event"),
}


def status_for(ex: RecsysError) -> tuple[str, str]:
    """``(status line, title)`` for a domain error; unknown subclasses are 500s."""
    for cls in type(ex).__mro__:
        if cls in DOMAIN_STATUS:
            return DOMAIN_STATUS[cls]
    return falcon.HTTP_500, "Internal error"


#: ``code`` of Falcon's own errors by status (spelled here, not taken from the status
#: phrase: Python renamed 413 between versions).
STATUS_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    411: "length_required", 413: "payload_too_large", 414: "uri_too_long",
    415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
    500: "internal_error", 503: "service_unavailable",
}


def status_code_name(status: str | int) -> str:
    """The ``code`` of a non-domain HTTP error (``http_<status>`` if not listed).

    >>> status_code_name(falcon.HTTP_413), status_code_name(404), status_code_name(418)
    ('payload_too_large', 'not_found', 'http_418')
    """
    number = int(str(status)[:3])
    return STATUS_CODES.get(number, f"http_{number}")


def _render(resp: Any, ex: RecsysError) -> None:
    status, title = status_for(ex)
    resp.status = status
    resp.media = {"title": title, "description": str(ex) or title, "code": ex.code}
    if status == falcon.HTTP_503:
        resp.set_header("Retry-After", "1")


def serialize_http_error(req: Any, resp: Any, ex: falcon.HTTPError) -> None:
    """Falcon's error body, always JSON, always with a ``description`` and a ``code``."""
    body = ex.to_dict()
    body.setdefault("description", body.get("title", "Error"))
    body.setdefault("code", status_code_name(ex.status))
    resp.content_type = falcon.MEDIA_JSON
    resp.data = msgspec.json.encode(body)


def add_domain_error_handlers(app: falcon.App) -> None:
    """Register the :data:`DOMAIN_STATUS` mapping and :func:`serialize_http_error` on a
    WSGI or ASGI Falcon app."""
    app.set_error_serializer(serialize_http_error)
    if isinstance(app, falcon.asgi.App):

        async def handle_async(req: Any, resp: Any, ex: RecsysError, params: Any) -> None:
            _render(resp, ex)

        app.add_error_handler(RecsysError, handle_async)
    else:

        def handle(req: Any, resp: Any, ex: RecsysError, params: Any) -> None:
            _render(resp, ex)

        app.add_error_handler(RecsysError, handle)
