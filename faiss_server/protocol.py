"""The FAISS service's wire protocol: the one module both sides speak.

The clients (:mod:`faiss_server.client`, :mod:`faiss_server.aclient`) and the service
(:mod:`faiss_server.app`) import their request/response types, the ``.npz`` version
format and the error mapping from here. It needs numpy and msgspec only, never faiss or
the index code, so a process that only *talks* to the service (the API, the worker, the
scripts) does not load them.

Errors: every error body is ``{"title", "description", "code"}`` (written in one place,
``common/http_errors.py``). :func:`error_for` maps an answer to an exception by its
``code``, never by its title:

- a domain code (``unknown_item``, ``index_not_ready``, ``service_unavailable``) → that
  :class:`~common.errors.RecsysError` subclass;
- any other 5xx → :class:`~common.errors.ServiceUnavailable`;
- any other 4xx → :class:`FaissRequestError` (``status``, ``code``, ``title``,
  ``description``).

>>> isinstance(error_for(404, b'{"title": "x", "description": "d", "code": "unknown_item"}'),
...            UnknownItem)
True
>>> error_for(404, b'{"title": "Not Found", "code": "not_found"}').code
'not_found'
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from common.errors import (
    IndexNotReady,
    RecsysError,
    ServiceUnavailable,
    UnknownItem,
)

#: ``(item id, inner-product score)``.
Hit = tuple[str, float]


# --- errors -------------------------------------------------------------------------------
class FaissRequestError(RecsysError):
    """The service rejected a request (a 4xx without a domain code)."""

    def __init__(self, status: int, title: str, description: str,
                 code: str = "bad_request") -> None:
        super().__init__(f"{status} {title}: {description}")
        self.status, self.title, self.description = status, title, description
        self.code = code  # the answer's code (instance attribute: varies per answer)


#: Domain error classes by the ``code`` of their error bodies.
DOMAIN_ERRORS: dict[str, type[RecsysError]] = {
    cls.code: cls for cls in (UnknownItem, IndexNotReady, ServiceUnavailable)}


class ErrorBody(msgspec.Struct):
    """Every error answer of the service (``common/http_errors.py`` writes it)."""

    title: str = ""
    description: str = ""
    code: str = ""


_error_dec = msgspec.json.Decoder(ErrorBody)


def error_for(status: int, data: bytes) -> RecsysError:
    """The exception for an error answer (``status`` ≥ 400, body ``data``)."""
    try:
        body = _error_dec.decode(data) if data else ErrorBody()
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = ErrorBody("Bad response", data[:200].decode("utf-8", "replace"))
    cls = DOMAIN_ERRORS.get(body.code)
    if cls is not None:
        return cls(body.description or body.title)
    if status >= 500:
        return ServiceUnavailable(
            f"FAISS service answered {status} {body.title}: {body.description}")
    return FaissRequestError(status, body.title, body.description, body.code or "bad_request")


# --- request bodies -------------------------------------------------------------------------
class SearchBody(msgspec.Struct):
    """``POST /v1/search``: numbers and lists only, as the schema says (no ``"1.5"``,
    ``true`` or ``null`` components, no ``null`` exclude).

    ``boosts`` (optional, one object per query vector, ``{}`` for none): the sparse part
    of a dense + sparse query, ``{item id: value ≥ 0}``. A boosted item scores
    ``q · p(item) + value``; the answer is the exact top-``k`` of that sum over the
    dense top-``k`` and every boosted item (see :meth:`VectorIndex.search`).

    ``only`` (optional, for every query vector): search within these ids alone, scored
    exactly (a request filter the caller resolved to ids; unknown ids are skipped).
    """

    vectors: list[list[float]]
    k: int = 10
    exclude: list[str] = []
    boosts: list[dict[str, float]] = []
    only: list[str] = []


class UpsertBody(msgspec.Struct):
    """``PUT /v1/items/{id}``."""

    vector: list[float]


class VersionRef(msgspec.Struct):
    """``POST /v1/index/versions`` (JSON form): a ``.npz`` the service reads itself."""

    version: str
    path: str


# --- response bodies ------------------------------------------------------------------------
class HitOut(msgspec.Struct):
    id: str
    score: float


class SearchOut(msgspec.Struct):
    """``POST /v1/search``: one row of hits per query vector."""

    version: str
    results: list[list[HitOut]]
    k: int = 0


class SimilarOut(msgspec.Struct):
    """``GET /v1/items/{id}/similar``."""

    version: str
    results: list[HitOut]
    item_id: str = ""


search_out_decoder = msgspec.json.Decoder(SearchOut)
similar_out_decoder = msgspec.json.Decoder(SimilarOut)


@dataclass(frozen=True)
class SearchResult:
    """What a client's ``search`` returns: the index version and one hit list per query."""

    version: str
    results: list[list[Hit]]

    @classmethod
    def from_wire(cls, out: SearchOut) -> SearchResult:
        return cls(out.version, [[(h.id, h.score) for h in row] for row in out.results])


@dataclass(frozen=True)
class SimilarResult:
    """What a client's ``similar`` returns."""

    version: str
    hits: list[Hit]

    @classmethod
    def from_wire(cls, out: SimilarOut) -> SimilarResult:
        return cls(out.version, [(h.id, h.score) for h in out.results])


# --- versions: the .npz format ------------------------------------------------------------
def check_npz_size(src: io.BytesIO | Path, max_bytes: int) -> int:
    """The uncompressed size of the arrays in an ``.npz``, read from its zip directory and
    each ``.npy`` header (numpy's own parser), or ``ValueError`` above ``max_bytes``.

    Nothing is allocated: ``np.load`` would allocate a header's full shape before
    reading (a 2**40-row header, or a 1 MB zip of zeros unpacking to gigabytes).
    """
    with zipfile.ZipFile(src) as zf:
        members = zf.infolist()
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise ValueError(f"the .npz unpacks to {declared} bytes; the limit is {max_bytes}")
        total = 0
        for m in members:
            with zf.open(m) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version} in {m.filename}")
            total += math.prod(shape) * dtype.itemsize
            if total > max_bytes:
                raise ValueError(f"the .npz arrays hold more than {max_bytes} bytes "
                                 f"({m.filename}: shape {shape}, {dtype})")
    if isinstance(src, io.BytesIO):
        src.seek(0)
    return total


def read_npz(data: bytes | Path, max_bytes: int = 1 << 30) -> tuple[list[str], np.ndarray]:
    """``(ids, vectors)`` from an ``.npz`` with arrays ``ids`` (str) and ``vectors``, whose
    arrays take at most ``max_bytes`` uncompressed (:func:`check_npz_size`)."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    check_npz_size(src, max_bytes)
    with np.load(src, allow_pickle=False) as z:
        if "ids" not in z.files or "vectors" not in z.files:
            raise ValueError(f"the .npz must hold arrays 'ids' and 'vectors', got {z.files}")
        ids = [str(i) for i in z["ids"].tolist()]
        vectors = z["vectors"]
    return ids, vectors


def write_npz(ids: Sequence[str], vectors: npt.ArrayLike) -> bytes:
    """The upload format of :func:`read_npz`.

    >>> ids, vecs = read_npz(write_npz(["a", "b/c"], [[1.0, 0.0], [0.0, 1.0]]))
    >>> ids, vecs.dtype.name, vecs.shape
    (['a', 'b/c'], 'float32', (2, 2))
    """
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(list(ids), dtype=str),
             vectors=np.ascontiguousarray(vectors, dtype=np.float32))
    return buf.getvalue()
