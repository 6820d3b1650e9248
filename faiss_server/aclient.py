"""Asyncio client of the FAISS service's read endpoints, for the recommender API's hot path.

Why not ``httpx``/``aiohttp``: the API spends its whole CPU budget (well under 1 ms per
request on 2 shared cores) on one search call, and a general-purpose client costs
several hundred µs per request. This client is a keep-alive pool of raw asyncio streams
speaking just enough HTTP/1.1 for the service (uvicorn always sends ``Content-Length``),
with ``msgspec`` for JSON: a search round trip costs the API process ~60-80 µs of CPU.

Trade-offs: no TLS, no chunked responses, no redirects (the service uses none of them;
anything unexpected closes the connection and raises ``ServiceUnavailable``).

Idle connections: the service closes a keep-alive connection after
``RECSYS_FAISS_KEEP_ALIVE_S`` (5 s) of silence. Reusing one it has closed fails at once,
and a low-traffic API would answer ``faiss_unavailable`` fallbacks while FAISS is
healthy (6 of 12 requests 6 s apart did). So a pooled connection idle for
``max_idle_s`` (below the keep-alive) is closed instead of reused, and a request on a
reused connection that is closed before any byte of the answer arrives is sent once
more on a new connection (every call here is a read, safe to repeat). Write
endpoints (upsert, version loads) stay on the blocking :class:`~faiss_server.client.FaissClient`.

Errors are those of :class:`~faiss_server.client.FaissClient`: refused / timeout →
``ServiceUnavailable``; error answers → :func:`faiss_server.protocol.error_for` (by the
body's ``code``). Wire types come from :mod:`faiss_server.protocol` (no faiss imported).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec

from common.errors import ServiceUnavailable
from common.ids import path_segment
from faiss_server.protocol import (
    SearchResult,
    SimilarResult,
    error_for,
    search_out_decoder,
    similar_out_decoder,
)

_any_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class _ClosedBeforeAnswer(Exception):
    """A reused connection was closed by the service before any byte of the answer."""


class AsyncFaissClient:
    """``search``, ``similar``, ``health`` over pooled keep-alive connections.

    Must be used from one event loop (one per API worker process).
    """

    def __init__(self, base_url: str, connect_timeout_s: float = 0.05,
                 read_timeout_s: float = 0.2, max_idle: int = 64,
                 max_idle_s: float = 2.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs are supported, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port or 80
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.max_idle, self.max_idle_s = max_idle, max_idle_s
        self._idle: deque[_Conn] = deque()
        #: Requests sent again after a reused connection turned out closed.
        self.retries = 0
        self._host_header = f"Host: {self.host}:{self.port}\r\n".encode()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    # --- transport ----------------------------------------------------------------------
    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ServiceUnavailable(f"FAISS service {self.base_url}: {exc!r}") from exc
        return _Conn(reader, writer)

    def _pooled(self) -> _Conn | None:
        """The most recently used idle connection still worth reusing, if any."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.max_idle_s and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _request(self, method: str, target: str,
                       body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self._host_header
        if body is not None:
            head += (b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n")
        msg = head + b"\r\n" + (body or b"")
        conn = self._pooled()
        if conn is not None:
            try:
                return await self._exchange(conn, msg)
            except _ClosedBeforeAnswer:
                self.retries += 1  # closed by the service meanwhile: once more, anew
        try:
            return await self._exchange(await self._connect(), msg)
        except _ClosedBeforeAnswer as exc:
            raise ServiceUnavailable(f"FAISS service {self.base_url} closed the "
                                     "connection before answering") from exc

    async def _exchange(self, conn: _Conn, msg: bytes) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                conn.writer.write(msg)
                status, data, keep = await self._read_response(conn.reader)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            partial = getattr(exc, "partial", b"")
            if not partial:
                raise _ClosedBeforeAnswer() from exc
            raise ServiceUnavailable(f"FAISS service {self.base_url}: {exc!r}") from exc
        except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
            conn.close()
            raise ServiceUnavailable(f"FAISS service {self.base_url}: {exc!r}") from exc
        except BaseException:
            conn.close()  # cancelled mid-response: the connection is in an unknown state
            raise
        if keep and len(self._idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return status, data

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
            elif name == b"transfer-encoding":
                raise ValueError("chunked responses are not supported")
        if length < 0:
            raise ValueError("response without Content-Length")
        data = await reader.readexactly(length) if length else b""
        return status, data, keep

    @staticmethod
    def _check(status: int, data: bytes) -> None:
        if status >= 400:
            raise error_for(status, data)

    # --- API ------------------------------------------------------------------------------
    async def search(self, vector: Sequence[float], k: int = 10,
                     exclude: Sequence[str] = (),
                     boost: Mapping[str, float] | None = None,
                     only: Sequence[str] = ()) -> SearchResult:
        """Top-``k`` for one query vector (``results`` has one row); ``boost``: its
        sparse part (``SearchBody.boosts``); ``only``: search within these ids."""
        return await self.search_many([vector], k, exclude, [boost] if boost else (), only)

    async def search_many(self, vectors: Sequence[Sequence[float]], k: int = 10,
                          exclude: Sequence[str] = (),
                          boosts: Sequence[Mapping[str, float]] = (),
                          only: Sequence[str] = ()) -> SearchResult:
        """Top-``k`` per query vector, one HTTP request (``exclude`` and ``only`` apply
        to all; ``boosts``: none, or one sparse part per vector)."""
        msg: dict[str, Any] = {"vectors": vectors, "k": int(k), "exclude": exclude}
        if any(boosts):
            msg["boosts"] = boosts
        if only:
            msg["only"] = only
        body = _enc.encode(msg)
        status, data = await self._request("POST", "/v1/search", body)
        self._check(status, data)
        try:
            return SearchResult.from_wire(search_out_decoder.decode(data))
        except msgspec.DecodeError as exc:
            raise ServiceUnavailable(f"FAISS service sent a bad search answer: {exc}") from exc

    async def similar(self, item_id: str, k: int = 10,
                      exclude: Sequence[str] = ()) -> SimilarResult:
        # Repeated ``exclude`` parameters, each percent-encoded: an id holding a comma
        # stays one id (the service splits only unencoded commas).
        query: dict[str, Any] = {"k": int(k), "exclude": list(exclude)}
        status, data = await self._request(
            "GET", f"/v1/items/{path_segment(item_id)}/similar?" + urlencode(query, doseq=True))
        self._check(status, data)
        try:
            return SimilarResult.from_wire(similar_out_decoder.decode(data))
        except msgspec.DecodeError as exc:
            raise ServiceUnavailable(f"FAISS service sent a bad answer: {exc}") from exc

    async def health(self) -> dict[str, Any]:
        status, data = await self._request("GET", "/health")
        self._check(status, data)
        out = _any_dec.decode(data) if data else {}
        return out if isinstance(out, dict) else {}
