"""Typed client of the FAISS service, for the recommender API and the streaming worker.

Built on ``urllib3`` (the transport under ``requests``, a third of its per-call CPU):
a keep-alive connection pool, thread-safe, with short timeouts and no retries, so a dead
or slow service fails fast. It speaks :mod:`faiss_server.protocol` only (no faiss, no
index code is imported). Failures become domain errors:

- connection refused, timeout → :class:`~common.errors.ServiceUnavailable`
- error answers → :func:`faiss_server.protocol.error_for`, by the body's ``code``
  (``unknown_item`` → :class:`~common.errors.UnknownItem`, ``index_not_ready`` →
  :class:`~common.errors.IndexNotReady`, other 5xx → ``ServiceUnavailable``, other 4xx →
  :class:`~faiss_server.protocol.FaissRequestError`)

>>> FaissClient("http://127.0.0.1:1").base_url
'http://127.0.0.1:1'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
import numpy as np
import numpy.typing as npt
import urllib3

from common.errors import ServiceUnavailable
from common.ids import path_segment
from common.settings import Settings
from faiss_server.protocol import (
    FaissRequestError,
    Hit,
    SearchResult,
    SimilarResult,
    error_for,
    search_out_decoder,
    similar_out_decoder,
    write_npz,
)

__all__ = ["FaissClient", "FaissRequestError", "Hit", "SearchResult", "SimilarResult"]


class FaissClient:
    """``search``, ``similar``, ``upsert``, ``delete``, ``load_version``, ``info``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        connect_timeout_s: float = 0.1,
        read_timeout_s: float = 0.25,
        load_timeout_s: float = 900.0,
        pool_size: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        # urllib3 applies the *connect* timeout while sending the body too: a version
        # upload (hundreds of MB) gets the long timeout for both phases.
        self.load_timeout = urllib3.Timeout(connect=load_timeout_s, read=load_timeout_s)
        self._pool = urllib3.connection_from_url(
            self.base_url, maxsize=pool_size, block=False, retries=False, timeout=self.timeout)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> FaissClient:
        return cls(settings.faiss_url, settings.faiss_api_key, **kwargs)

    def close(self) -> None:
        self._pool.close()

    # --- transport ----------------------------------------------------------------------
    def _send(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
              write: bool = False, timeout: urllib3.Timeout | None = None) -> bytes:
        """The body of a successful answer; errors raised as :func:`error_for` says."""
        headers = {"Accept": "application/json"}
        data = raw
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "application/octet-stream"
        if write and self.api_key:
            headers["X-API-Key"] = self.api_key
        try:
            resp = self._pool.urlopen(method, path, body=data, headers=headers,
                                      timeout=timeout or self.timeout, retries=False,
                                      preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceUnavailable(f"FAISS service {self.base_url}: {exc}") from exc
        answer: bytes = resp.data
        if resp.status >= 400:
            raise error_for(resp.status, answer)
        return answer

    def _request(self, method: str, path: str, body: object = None, *,
                 raw: bytes | None = None, write: bool = False,
                 timeout: urllib3.Timeout | None = None) -> dict[str, Any]:
        """A successful answer's JSON object."""
        data = self._send(method, path, body, raw=raw, write=write, timeout=timeout)
        try:
            out = json.loads(data) if data else {}
        except ValueError as exc:
            raise ServiceUnavailable(f"FAISS service sent a bad answer: {data[:200]!r}") from exc
        if not isinstance(out, dict):
            raise ServiceUnavailable(f"FAISS service sent a bad answer: {data[:200]!r}")
        return out

    # --- API ------------------------------------------------------------------------------
    def search(self, vectors: npt.ArrayLike, k: int = 10, exclude: Sequence[str] = (),
               boosts: Sequence[Mapping[str, float]] = (),
               only: Sequence[str] = ()) -> SearchResult:
        """Top-``k`` per query row (a 1-D vector is one query); ``boosts``: none, or
        one sparse part per row (``SearchBody.boosts``); ``only``: search within these
        ids (``SearchBody.only``)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        body: dict[str, object] = {"vectors": x.tolist(), "k": int(k),
                                   "exclude": list(exclude)}
        if any(boosts):
            body["boosts"] = [dict(b) for b in boosts]
        if only:
            body["only"] = list(only)
        data = self._send("POST", "/v1/search", body)
        try:
            return SearchResult.from_wire(search_out_decoder.decode(data))
        except msgspec.DecodeError as exc:
            raise ServiceUnavailable(f"FAISS service sent a bad search answer: {exc}") from exc

    def similar(self, item_id: str, k: int = 10, exclude: Sequence[str] = ()) -> SimilarResult:
        # Repeated ``exclude`` parameters, each percent-encoded: an id holding a comma
        # stays one id (the service splits only unencoded commas).
        query: dict[str, object] = {"k": int(k), "exclude": list(exclude)}
        data = self._send("GET", f"/v1/items/{path_segment(item_id)}/similar?"
                          + urlencode(query, doseq=True))
        try:
            return SimilarResult.from_wire(similar_out_decoder.decode(data))
        except msgspec.DecodeError as exc:
            raise ServiceUnavailable(f"FAISS service sent a bad answer: {exc}") from exc

    def vector(self, item_id: str) -> np.ndarray:
        out = self._request("GET", f"/v1/items/{path_segment(item_id)}")
        return np.asarray(out["vector"], dtype=np.float32)

    def upsert(self, item_id: str, vector: npt.ArrayLike) -> dict[str, Any]:
        vec = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        return self._request("PUT", f"/v1/items/{path_segment(item_id)}",
                             {"vector": vec}, write=True)

    def delete(self, item_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/items/{path_segment(item_id)}", write=True)

    def load_version(
        self, path_or_arrays: str | Path | tuple[Sequence[str], npt.ArrayLike], version: str
    ) -> dict[str, Any]:
        """Load a new version and swap it in; returns its info once it serves.

        ``path_or_arrays`` is a path to an ``.npz`` (arrays ``ids``, ``vectors``) that the
        *service* can read (inside its allowed folders), or ``(ids, vectors)`` to upload.
        """
        if isinstance(path_or_arrays, str | Path):
            return self._request("POST", "/v1/index/versions",
                                 {"version": version, "path": str(path_or_arrays)},
                                 write=True, timeout=self.load_timeout)
        ids, vectors = path_or_arrays
        return self._request("POST", "/v1/index/versions?" + urlencode({"version": version}),
                             raw=write_npz(ids, vectors), write=True,
                             timeout=self.load_timeout)

    def snapshot(self) -> dict[str, Any]:
        return self._request("POST", "/v1/index/snapshot", write=True,
                             timeout=self.load_timeout)

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/index")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")
