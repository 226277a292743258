"""The application's own records in SQLite: API keys (by id, hash only), idempotency outcomes,
and the secret that signs file links (``url_secret``: one row, replaced by a rotation).

An outcome is written in the same transaction as the command's events, so a crash can never
leave events without their record or a record without its events. (Databases from before the
outcomes table also hold an ``idempotency`` table of raw HTTP responses; it is no longer read.)
"""

from __future__ import annotations

import secrets
import sqlite3

from ledger.errors import DuplicateRecord, StorageUnavailable
from ledger.log import KeyRecord, StoredOutcome
from ledger.sqlite.connection import storage_error
from ledger.sqlite.log import SqliteLog

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    role TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS idempotency_outcomes (
    key_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS url_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BLOB NOT NULL
);
"""


class SqliteRecords:
    """``ledger.log.Records`` on the SQLite file of a ``SqliteLog``. Key changes are rare and
    made by the command line: each is its own short transaction on the log's write connection."""

    def __init__(self, log: SqliteLog) -> None:
        self._log = log
        #: A database from before the outcomes table keeps its earlier keys' responses in the
        #: ``idempotency`` table; they are looked up so that such a retry is never run again.
        self._legacy = bool(
            log.reader()
            .execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'idempotency'")
            .fetchone()
        )

    # -- keys -------------------------------------------------------------------------------

    def add_key(self, record: KeyRecord, key_hash: str) -> None:
        with self._log.transaction() as tx:
            if tx.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (record.key_id,)).fetchone():
                raise DuplicateRecord(f"A key with id {record.key_id} already exists")
            tx.execute(
                "INSERT INTO api_keys (key_id, owner, role, key_hash, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.key_id,
                    record.owner,
                    record.role,
                    key_hash,
                    record.created_at,
                    record.revoked_at,
                ),
            )

    def find_key(self, key_id: str) -> tuple[KeyRecord, str] | None:
        row = (
            self._log.reader()
            .execute(
                "SELECT owner, role, created_at, revoked_at, key_hash FROM api_keys"
                " WHERE key_id = ?",
                (key_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        record = KeyRecord(
            key_id=key_id, owner=row[0], role=row[1], created_at=row[2], revoked_at=row[3]
        )
        return record, row[4]

    def list_keys(self) -> list[KeyRecord]:
        rows = self._log.reader().execute(
            "SELECT key_id, owner, role, created_at, revoked_at FROM api_keys"
            " ORDER BY created_at, key_id"
        )
        return [
            KeyRecord(key_id=r[0], owner=r[1], role=r[2], created_at=r[3], revoked_at=r[4])
            for r in rows
        ]

    def revoke_key(self, key_id: str, at: str) -> bool:
        with self._log.transaction() as tx:
            cursor = tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
        return cursor.rowcount == 1

    def count_keys(self) -> int:
        (count,) = self._log.reader().execute("SELECT count(*) FROM api_keys").fetchone()
        return count

    # -- idempotency outcomes ---------------------------------------------------------------

    def find_outcome(
        self, key_id: str, idempotency_key: str, *, tx: sqlite3.Connection | None = None
    ) -> StoredOutcome | None:
        conn = tx if tx is not None else self._log.reader()
        row = conn.execute(
            "SELECT fingerprint, outcome FROM idempotency_outcomes"
            " WHERE key_id = ? AND idempotency_key = ?",
            (key_id, idempotency_key),
        ).fetchone()
        if row is not None:
            return StoredOutcome(fingerprint=row[0], outcome=bytes(row[1]))
        if self._legacy:
            old = conn.execute(
                "SELECT fingerprint FROM idempotency WHERE key_id = ? AND idempotency_key = ?",
                (key_id, idempotency_key),
            ).fetchone()
            if old is not None:
                return StoredOutcome(fingerprint=old[0], outcome=b"", legacy=True)
        return None

    def record_outcome(
        self,
        tx: sqlite3.Connection,
        key_id: str,
        idempotency_key: str,
        outcome: StoredOutcome,
        at: str,
    ) -> None:
        try:
            tx.execute(
                "INSERT INTO idempotency_outcomes (key_id, idempotency_key, fingerprint, outcome,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, idempotency_key, outcome.fingerprint, outcome.outcome, at),
            )
        except sqlite3.IntegrityError:
            raise DuplicateRecord() from None
        except sqlite3.Error as exc:
            error = storage_error(exc)
            if isinstance(error, StorageUnavailable):
                raise error from exc
            raise

    # -- the secret that signs file links ---------------------------------------------------

    def url_secret(self) -> bytes:
        row = self._log.reader().execute("SELECT secret FROM url_secret WHERE id = 1").fetchone()
        if row is not None:
            return bytes(row[0])
        # First use: whoever commits first wins; the others read the winner's.
        with self._log.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO url_secret (id, secret) VALUES (1, ?)",
                (secrets.token_bytes(32),),
            )
            (secret,) = tx.execute("SELECT secret FROM url_secret WHERE id = 1").fetchone()
        return bytes(secret)

    def rotate_url_secret(self) -> bytes:
        secret = secrets.token_bytes(32)
        with self._log.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO url_secret (id, secret) VALUES (1, ?)", (secret,))
        return secret
