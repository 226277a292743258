"""Idempotency-Key: a retry with the same key and body gets the original response and appends
nothing. The response is stored in the same transaction as the command's events, so a crash can
never leave events without their record or a record without its events."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime

import msgspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
"""

MAX_KEY_LENGTH = 255


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    status_code: int
    media_type: str
    body: bytes


class IdempotencyMismatch(Exception):
    def __init__(self) -> None:
        super().__init__(
            "Idempotency-Key was already used with a different request; use a new key"
        )


class AlreadyRecorded(Exception):
    """Another request with the same key committed first; its response is the answer."""


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def lookup(conn: sqlite3.Connection, key_id: str, idempotency_key: str) -> StoredResponse | None:
    row = conn.execute(
        "SELECT fingerprint, status_code, media_type, body FROM idempotency"
        " WHERE key_id = ? AND idempotency_key = ?",
        (key_id, idempotency_key),
    ).fetchone()
    if row is None:
        return None
    return StoredResponse(
        fingerprint=row[0], status_code=row[1], media_type=row[2], body=bytes(row[3])
    )


def record(
    tx: sqlite3.Connection, key_id: str, idempotency_key: str, response: StoredResponse
) -> None:
    try:
        tx.execute(
            "INSERT INTO idempotency (key_id, idempotency_key, fingerprint, status_code,"
            " media_type, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                idempotency_key,
                response.fingerprint,
                response.status_code,
                response.media_type,
                response.body,
                datetime.now(UTC).isoformat(),
            ),
        )
    except sqlite3.IntegrityError:
        raise AlreadyRecorded() from None
