"""The SQLite connection and schema: pragmas, the events and blobs tables, the append-only
triggers, schema migrations, and the mapping of driver errors to StorageUnavailable."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ledger.errors import StorageUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    actor_key_id TEXT,
    actor_role TEXT NOT NULL,
    request_id TEXT,
    idempotency_key TEXT,
    hash TEXT NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS events_type ON events (type, position);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed');
END;
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_refs (
    task_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (task_id, sha256)
);
CREATE INDEX IF NOT EXISTS blob_refs_sha ON blob_refs (sha256);
"""

#: Text of the SQLite errors that mean "cannot write now", not "bad request".
_STORAGE_ERRORS = (
    "database or disk is full",
    "readonly database",
    "read-only",
    "database is locked",
    "disk i/o error",
    "unable to open database",
)


def storage_error(exc: sqlite3.Error) -> Exception:
    """Map a driver error to StorageUnavailable when it is about the disk, else return it."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and any(s in text for s in _STORAGE_ERRORS):
        return StorageUnavailable(f"The database cannot be written right now ({exc})")
    return exc


#: Permissions of a database file this creates: its owner's alone (the log holds every input, every
#: output and the key hashes). SQLite gives the -wal and -shm files the database file's mode.
FILE_MODE = 0o600


def create_private(path: str | Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file keeps its mode:
    an operator may have widened it on purpose)."""
    if str(path) == ":memory:" or str(path).startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except OSError:
        return  # it exists, or cannot be made: SQLite itself says why when it opens it
    os.close(fd)


def connect(
    path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
) -> sqlite3.Connection:
    create_private(path)
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return conn
