"""What a storage backend raises: its failures, sorted for the flows that catch them."""

from __future__ import annotations

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential


class BackendError(Exception):
    """A backend command failed; ``message`` is meant for the operator."""


class NotFound(BackendError):
    pass


class AlreadyExists(BackendError):
    pass


class Busy(BackendError):
    """The dataset is held or in use."""


def while_busy(seconds: float = 30.0) -> AsyncRetrying:
    """Retry what a backend calls busy for a while: a volume stays busy briefly after a
    receive ends (ZFS), or while a client has a file open for a moment."""
    return AsyncRetrying(retry=retry_if_exception_type(Busy), stop=stop_after_delay(seconds),
                         wait=wait_exponential(multiplier=0.1, max=2), reraise=True)
