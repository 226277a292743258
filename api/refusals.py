"""Requests the service refuses for reasons of their own (not task rules, which are the
decider's ``LedgerError``s). Each message is what a person reads in the 4xx body."""

from __future__ import annotations


class BadRequest(Exception):
    """A request a person must fix (400)."""


class InvalidKey(Exception):
    """The presented API key is missing, malformed, unknown or revoked (401)."""


class RateLimited(Exception):
    """Too many requests for this key (429); ``retry_after`` is how many seconds to wait."""

    def __init__(self, retry_after: int, message: str = "Rate limit exceeded; retry later") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyStreams(RateLimited):
    """The key already has as many event streams open in this process as it may (429)."""

    def __init__(self, limit: int, retry_after: int = 5) -> None:
        super().__init__(
            retry_after,
            f"Too many open event streams for this key: {limit} are open, the most one key may"
            " have; close one, then retry",
        )
        self.limit = limit


class Busy(Exception):
    """The server is already doing as many of these as it takes at once (503, Retry-After)."""


class IdempotencyMismatch(Exception):
    """The Idempotency-Key cannot answer this request (422): it was used with a different
    request, or its answer cannot be replayed."""

    def __init__(
        self,
        message: str = "Idempotency-Key was already used with a different request; use a new key",
    ) -> None:
        super().__init__(message)


def size_text(n: int) -> str:
    """A byte count as a refusal names it: ``32 MiB`` when it is a whole number of a unit,
    else ``2000 bytes``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
