"""Idempotency-Key: a retry with the same key and the same request gets the original outcome and
appends nothing. The outcome is stored (``Records.record_outcome``) in the same transaction as
the command's events, so a crash can never leave events without their record or a record
without its events."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from api.refusals import BadRequest

MAX_KEY_LENGTH = 255

_encoder = msgspec.json.Encoder(order="deterministic")


def check_key(key: str | None) -> str | None:
    """The key as it will be stored (surrounding blanks dropped); BadRequest if unusable."""
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    return key


def fingerprint(use_case: str, *parts: Any) -> str:
    """What identifies a request for its key: the use case and its arguments (a retry with
    the same key but other arguments is refused, not answered with another request's outcome).
    Objects are encoded with sorted keys, so the order of a body's fields does not matter."""
    return hashlib.sha256(_encoder.encode([use_case, *parts])).hexdigest()
