"""API keys: stored as SHA-256 hashes, looked up by their public id, compared in constant time.

A key reads ``tlk_<key id>_<secret>``. The id (12 hex characters) is not secret and is what the
log records as the actor; the database keeps only ``sha256(key)``, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from datetime import UTC, datetime

import msgspec
import sqlite_utils

ROLES = ("user", "worker", "admin")
PREFIX = "tlk_"


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    owner: str
    role: str

    @property
    def scope(self) -> str | None:
        """The owner whose tasks this caller may see; None for every owner (admin, worker)."""
        return self.owner if self.role == "user" else None


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    owner: str
    role: str
    created_at: str
    revoked_at: str | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_table(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    if "api_keys" not in db.table_names():
        db["api_keys"].create(
            {
                "key_id": str,
                "owner": str,
                "role": str,
                "key_hash": str,
                "created_at": str,
                "revoked_at": str,
            },
            pk="key_id",
            not_null={"owner", "role", "key_hash", "created_at"},
            if_not_exists=True,
        )


def create_key(conn: sqlite3.Connection, owner: str, role: str) -> tuple[KeyRecord, str]:
    """Make a key; returns its record and the key itself (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not owner or not owner.strip():
        raise ValueError("owner must not be empty")
    ensure_table(conn)
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(
        key_id=key_id,
        owner=owner,
        role=role,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        revoked_at=None,
    )
    with conn:
        conn.execute(
            "INSERT INTO api_keys (key_id, owner, role, key_hash, created_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?, NULL)",
            (key_id, owner, role, _hash(key), record.created_at),
        )
    return record, key


def list_keys(conn: sqlite3.Connection) -> list[KeyRecord]:
    ensure_table(conn)
    rows = conn.execute(
        "SELECT key_id, owner, role, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
    )
    return [
        KeyRecord(key_id=r[0], owner=r[1], role=r[2], created_at=r[3], revoked_at=r[4]) for r in rows
    ]


def revoke_key(conn: sqlite3.Connection, key_id: str) -> bool:
    """Revoke a key by id; False if there is no such active key."""
    ensure_table(conn)
    with conn:
        cursor = conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (datetime.now(UTC).isoformat(timespec="seconds"), key_id),
        )
    return cursor.rowcount == 1


def count_keys(conn: sqlite3.Connection) -> int:
    ensure_table(conn)
    return conn.execute("SELECT count(*) FROM api_keys").fetchone()[0]


class InvalidKey(Exception):
    """The presented key is malformed, unknown or revoked; the message says which, for a 401."""


def parse_authorization(header: str | None) -> str:
    """The key from ``Authorization: <key>`` or ``Authorization: Bearer <key>``."""
    if header is None:
        raise InvalidKey("Authorization header is missing")
    value = header.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    if not value:
        raise InvalidKey("API key is missing")
    return value


def authenticate(conn: sqlite3.Connection, key: str) -> Caller:
    if not key.startswith(PREFIX) or len(key) < len(PREFIX) + 14 or key[len(PREFIX) + 12] != "_":
        raise InvalidKey("Invalid or inactive API key")
    key_id = key[len(PREFIX) : len(PREFIX) + 12]
    row = conn.execute(
        "SELECT owner, role, key_hash, revoked_at FROM api_keys WHERE key_id = ?", (key_id,)
    ).fetchone()
    # Hash and compare even when the id is unknown, so timing says nothing about which ids exist.
    stored = row[2] if row else "0" * 64
    matches = hmac.compare_digest(_hash(key), stored)
    if row is None or not matches or row[3] is not None:
        raise InvalidKey("Invalid or inactive API key")
    return Caller(key_id=key_id, owner=row[0], role=row[1])
