"""Domain errors shared across the project; servers map them to HTTP in one place."""


class RecsysError(Exception):
    """Base class of every error this project raises on purpose."""


class BadEvent(RecsysError):
    """An event failed validation; ``reason`` says why (it goes to the dead-letter topic)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownUser(RecsysError):
    """No stored vector for this user (the API falls back to popular items)."""


class UnknownItem(RecsysError):
    """The item id is not in the catalogue or the index."""


class IndexNotReady(RecsysError):
    """The ANN index has not been loaded yet."""


class ServiceUnavailable(RecsysError):
    """A dependency (MongoDB, Redis, FAISS service, broker) did not answer in time."""
