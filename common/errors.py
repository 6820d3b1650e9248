"""Domain errors shared across the project; servers map them to HTTP in one place."""


class RecsysError(Exception):
    """Base class of every error this project raises on purpose.

    ``code`` is the stable, machine-readable name of the error: HTTP error bodies carry it
    (``common/http_errors.py``) and clients map it back to the class
    (``faiss_server/protocol.py``), never the human-readable title.
    """

    code = "internal_error"


class BadEvent(RecsysError):
    """An event failed validation; ``reason`` says why (it goes to the dead-letter topic)."""

    code = "bad_event"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownUser(RecsysError):
    """No stored vector for this user (the API falls back to popular items)."""

    code = "unknown_user"


class UnknownItem(RecsysError):
    """The item id is not in the catalogue or the index."""

    code = "unknown_item"


class IndexNotReady(RecsysError):
    """The ANN index has not been loaded yet."""

    code = "index_not_ready"


class ServiceUnavailable(RecsysError):
    """A dependency (MongoDB, Redis, FAISS service, broker) did not answer in time."""

    code = "service_unavailable"
