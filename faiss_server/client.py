"""Typed client of the FAISS service, for the recommender API and the streaming worker.

Built on ``urllib3`` (the transport under ``requests``, a third of its per-call CPU):
a keep-alive connection pool, thread-safe, with short timeouts and no retries, so a dead
or slow service fails fast. Failures become domain errors:

- connection refused, timeout, 5xx → :class:`~common.errors.ServiceUnavailable`
  (503 "Index not ready" → :class:`~common.errors.IndexNotReady`)
- 404 → :class:`~common.errors.UnknownItem`
- other 4xx → :class:`FaissRequestError` (``status``, ``title``, ``description``)

>>> FaissClient("http://127.0.0.1:1").base_url
'http://127.0.0.1:1'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import urllib3

from common.errors import IndexNotReady, RecsysError, ServiceUnavailable, UnknownItem
from common.ids import path_segment
from common.settings import Settings
from faiss_server.service import write_npz

Hit = tuple[str, float]


class FaissRequestError(RecsysError):
    """The service rejected a request (4xx other than 404)."""

    def __init__(self, status: int, title: str, description: str) -> None:
        super().__init__(f"{status} {title}: {description}")
        self.status, self.title, self.description = status, title, description


@dataclass(frozen=True)
class SearchResult:
    version: str
    results: list[list[Hit]]


@dataclass(frozen=True)
class SimilarResult:
    version: str
    hits: list[Hit]


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
    def _request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                 write: bool = False, timeout: urllib3.Timeout | None = None) -> Any:
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
        try:
            payload = json.loads(resp.data) if resp.data else {}
        except ValueError:
            payload = {"title": "Bad response", "description": resp.data[:200].decode("replace")}
        if resp.status < 400:
            return payload
        title = str(payload.get("title", "")) if isinstance(payload, dict) else ""
        desc = str(payload.get("description", "")) if isinstance(payload, dict) else ""
        if resp.status == 404:
            raise UnknownItem(desc or title)
        if resp.status == 503 and title == "Index not ready":
            raise IndexNotReady(desc or title)
        if resp.status >= 500:
            raise ServiceUnavailable(f"FAISS service answered {resp.status} {title}: {desc}")
        raise FaissRequestError(resp.status, title, desc)

    # --- API ------------------------------------------------------------------------------
    def search(self, vectors: Any, k: int = 10, exclude: Sequence[str] = ()) -> SearchResult:
        """Top-``k`` per query row (a 1-D vector is one query)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        body = {"vectors": x.tolist(), "k": int(k), "exclude": list(exclude)}
        out = self._request("POST", "/v1/search", body)
        return SearchResult(out["version"], [[(h["id"], float(h["score"])) for h in hits]
                                             for hits in out["results"]])

    def similar(self, item_id: str, k: int = 10, exclude: Sequence[str] = ()) -> SimilarResult:
        # Repeated ``exclude`` parameters, each percent-encoded: an id holding a comma
        # stays one id (the service splits only unencoded commas).
        query: dict[str, Any] = {"k": int(k), "exclude": list(exclude)}
        out = self._request("GET", f"/v1/items/{path_segment(item_id)}/similar?"
                            + urlencode(query, doseq=True))
        return SimilarResult(out["version"], [(h["id"], float(h["score"]))
                                              for h in out["results"]])

    def vector(self, item_id: str) -> np.ndarray:
        out = self._request("GET", f"/v1/items/{path_segment(item_id)}")
        return np.asarray(out["vector"], dtype=np.float32)

    def upsert(self, item_id: str, vector: Any) -> dict[str, Any]:
        vec = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        return self._request("PUT", f"/v1/items/{path_segment(item_id)}",
                             {"vector": vec}, write=True)

    def delete(self, item_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/items/{path_segment(item_id)}", write=True)

    def load_version(
        self, path_or_arrays: str | Path | tuple[Sequence[str], Any], version: str
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
