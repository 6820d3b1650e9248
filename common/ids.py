"""The one rule for external ids (items, users) shared by ingest, both services and the clients.

Ids are opaque strings. Rather than forbidding characters that have a meaning in URLs
(``/``, ``?``, ``%``, ``#``, ``..``), every HTTP path carries an id as one
percent-encoded segment (:func:`path_segment`) and both services route on the raw,
still-encoded path (:mod:`common.http_request`), so any id ingest stores can be addressed.
The only limit is the length, :data:`MAX_ID_LEN` (and ids must be valid Unicode, which
JSON decoding already guarantees).

>>> path_segment("a/b c")
'a%2Fb%20c'
>>> path_segment("..")
'%2E%2E'
"""

from __future__ import annotations

from urllib.parse import quote

#: Longest id any part of the system accepts (ingest, FAISS service, API).
MAX_ID_LEN = 256


def valid_id(value: object) -> bool:
    """Whether ``value`` is an id the services can store and address."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LEN


def path_segment(item_id: str) -> str:
    """``item_id`` as one URL path segment: every reserved character percent-encoded,
    and the dot segments ``.``/``..`` too (clients and proxies would otherwise
    normalise them away)."""
    encoded = quote(item_id, safe="")
    return encoded.replace(".", "%2E") if item_id in (".", "..") else encoded
