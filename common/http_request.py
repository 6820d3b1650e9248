"""Request-side rules shared by both Falcon services: id routing, strict parameters, body limits.

- **Ids in paths.** ASGI servers hand Falcon a percent-*decoded* path, so an id holding
  ``/`` (sent as ``%2F``) would be split into two segments and never reach its route.
  :class:`RawPathRouting` routes on the raw path instead (each segment re-encoded in one
  canonical form) and :class:`EncodedId` (``{item_id:id}`` in a route) decodes the one
  segment back into the id. See :mod:`common.ids`.
- **Integers.** Falcon's ``get_param_as_int`` uses ``int()``, which accepts ``" 10"``,
  ``"\\t2"``, ``"1_0"`` and non-ASCII digits; :func:`int_param` takes ASCII digits only.
- **Bodies.** A server that answers before reading a large body and closes the socket
  makes the client see a connection reset instead of the answer. :func:`read_body` and
  :class:`BodyLimit` read (and drop) an oversized body up to :data:`DRAIN_MAX_BYTES`
  first, so the client receives the 413 with its JSON error.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import falcon
import falcon.asgi
import falcon.routing

from common.ids import MAX_ID_LEN, valid_id

#: An oversized body is read and dropped up to this size so that its 413 is delivered;
#: beyond it the connection is closed after the answer (the client may see a reset).
DRAIN_MAX_BYTES = 64 * 1024 * 1024

_DIGITS = re.compile(r"[0-9]{1,12}")


def routing_path(raw_path: bytes) -> str:
    """``raw_path`` with every segment percent-encoded in one canonical form.

    >>> routing_path(b"/v1/items/a%2fb/similar")
    '/v1/items/a%2Fb/similar'
    >>> routing_path(b"/v1/%69tems/caf%C3%A9")
    '/v1/items/caf%C3%A9'
    """
    return "/".join(quote(unquote_to_bytes(seg), safe="") for seg in raw_path.split(b"/"))


class RawPathRouting:
    """Falcon ASGI middleware: route on the raw path (see the module docstring)."""

    async def process_request(self, req: falcon.asgi.Request, resp: Any) -> None:
        raw = req.scope.get("raw_path")
        if raw:
            req.path = routing_path(raw)


class EncodedId(falcon.routing.BaseConverter):
    """``{name:id}``: one percent-encoded path segment decoded as UTF-8 (invalid UTF-8 does
    not match the route: 404); the handler checks the length (:func:`checked_id`)."""

    def convert(self, value: str) -> str | None:
        try:
            return unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None


def checked_id(value: str, name: str = "item_id") -> str:
    """``value`` if it is a valid id (:func:`common.ids.valid_id`), else 400."""
    if not valid_id(value):
        raise falcon.HTTPInvalidParam(f"ids are 1..{MAX_ID_LEN} characters", name)
    return value


def use_raw_path_ids(app: falcon.asgi.App) -> None:
    """Enable :class:`RawPathRouting` and the ``id`` converter on ``app`` (before routes)."""
    app.router_options.converters["id"] = EncodedId
    app.add_middleware(RawPathRouting())


def int_param(req: Any, name: str, default: int, min_value: int, max_value: int) -> int:
    """Query parameter ``name`` as an int in ``[min_value, max_value]``: ASCII digits only,
    given at most once; else 400 with a JSON error."""
    raw = req.params.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str) or not _DIGITS.fullmatch(raw) or \
            not min_value <= int(raw) <= max_value:
        raise falcon.HTTPInvalidParam(
            f"it must be given once, as a decimal integer in {min_value}..{max_value}", name)
    return int(raw)


def choice_param(req: Any, name: str, choices: tuple[str, ...], default: str) -> str:
    """Query parameter ``name`` as one of ``choices``, given at most once; else 400 with
    a JSON error naming the choices."""
    raw = req.params.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str) or raw not in choices:
        raise falcon.HTTPInvalidParam(
            f"it must be given once, as one of {', '.join(choices)}", name)
    return raw


def too_large(limit: int) -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(
        title="Request too large", description=f"the body must be at most {limit} bytes")


async def _drain(req: falcon.asgi.Request, already: int) -> None:
    seen = already
    async for chunk in req.stream:
        seen += len(chunk)
        if seen > DRAIN_MAX_BYTES:
            return


async def read_body(req: falcon.asgi.Request, limit: int) -> bytes:
    """The request body, or 413 (after draining the rest) when larger than ``limit``."""
    if req.content_length is not None and req.content_length > limit:
        await _drain(req, 0)
        raise too_large(limit)
    data = await req.stream.read(limit + 1)
    if len(data) > limit:
        await _drain(req, len(data))
        raise too_large(limit)
    return data


class BodyLimit:
    """Falcon ASGI middleware: 413 for any request whose declared body exceeds ``limit``
    (the API takes no bodies; this makes a huge one an answer, not a reset)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def process_request(self, req: falcon.asgi.Request, resp: Any) -> None:
        length = req.content_length
        if (length or 0) > self.limit or (length is None
                                          and req.get_header("Transfer-Encoding")):
            await read_body(req, self.limit)  # 413 if too large; a small body is ignored
