"""The application's own records on PostgreSQL: API keys (hash only), idempotency outcomes
(written in the command's transaction) and the secret that signs file links."""

from __future__ import annotations

import secrets

import psycopg

from ledger.errors import DuplicateRecord, StorageUnavailable
from ledger.log import KeyRecord, StoredOutcome
from ledger.postgres.connection import storage_error
from ledger.postgres.log import PostgresLog


def insert_key(tx: psycopg.Connection, record: KeyRecord, key_hash: str) -> bool:
    """Store a key inside ``tx``; False (nothing written) if its id is taken."""
    added = tx.execute(
        "INSERT INTO api_keys (key_id, owner, role, key_hash, created_at, revoked_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING RETURNING 1",
        (record.key_id, record.owner, record.role, key_hash, record.created_at, record.revoked_at),
    ).fetchone()
    return added is not None


class PostgresRecords:
    """``ledger.log.Records`` on the database of a ``PostgresLog``."""

    def __init__(self, log: PostgresLog) -> None:
        self._log = log

    # -- keys -------------------------------------------------------------------------------

    def add_key(self, record: KeyRecord, key_hash: str) -> None:
        with self._log.transaction() as tx:
            if not insert_key(tx, record, key_hash):
                raise DuplicateRecord(f"A key with id {record.key_id} already exists")

    def find_key(self, key_id: str) -> tuple[KeyRecord, str] | None:
        row = self._log.fetchone(
            "SELECT owner, role, created_at, revoked_at, key_hash FROM api_keys WHERE key_id = %s",
            (key_id,),
        )
        if row is None:
            return None
        record = KeyRecord(
            key_id=key_id, owner=row[0], role=row[1], created_at=row[2], revoked_at=row[3]
        )
        return record, row[4]

    def list_keys(self) -> list[KeyRecord]:
        rows = self._log.fetchall(
            "SELECT key_id, owner, role, created_at, revoked_at FROM api_keys"
            " ORDER BY created_at, key_id"
        )
        return [
            KeyRecord(key_id=r[0], owner=r[1], role=r[2], created_at=r[3], revoked_at=r[4])
            for r in rows
        ]

    def revoke_key(self, key_id: str, at: str) -> bool:
        with self._log.transaction() as tx:
            revoked = tx.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL"
                " RETURNING 1",
                (at, key_id),
            ).fetchall()
        return len(revoked) == 1

    def count_keys(self) -> int:
        row = self._log.fetchone("SELECT count(*) FROM api_keys")
        return row[0] if row else 0

    # -- idempotency outcomes ---------------------------------------------------------------

    def find_outcome(
        self, key_id: str, idempotency_key: str, *, tx: psycopg.Connection | None = None
    ) -> StoredOutcome | None:
        row = self._log.fetchone(
            "SELECT fingerprint, outcome FROM idempotency_outcomes"
            " WHERE key_id = %s AND idempotency_key = %s",
            (key_id, idempotency_key),
            tx=tx,
        )
        return StoredOutcome(fingerprint=row[0], outcome=bytes(row[1])) if row else None

    def record_outcome(
        self,
        tx: psycopg.Connection,
        key_id: str,
        idempotency_key: str,
        outcome: StoredOutcome,
        at: str,
    ) -> None:
        try:
            # The answer is read at once (in a write transaction's pipeline too): a duplicate is
            # raised here, for this command.
            tx.execute(
                "INSERT INTO idempotency_outcomes (key_id, idempotency_key, fingerprint, outcome,"
                " created_at) VALUES (%s, %s, %s, %s, %s) RETURNING 1",
                (key_id, idempotency_key, outcome.fingerprint, outcome.outcome, at),
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise DuplicateRecord() from None
        except psycopg.Error as exc:
            error = storage_error(exc)
            if isinstance(error, StorageUnavailable):
                raise error from exc
            raise

    # -- the secret that signs file links ---------------------------------------------------

    def url_secret(self) -> bytes:
        row = self._log.fetchone("SELECT secret FROM url_secret WHERE id = 1")
        if row is not None:
            return bytes(row[0])
        with self._log.transaction() as tx:
            tx.execute(
                "INSERT INTO url_secret (id, secret) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                (secrets.token_bytes(32),),
            )
            found = tx.execute("SELECT secret FROM url_secret WHERE id = 1").fetchone()
        assert found is not None
        return bytes(found[0])

    def rotate_url_secret(self) -> bytes:
        secret = secrets.token_bytes(32)
        with self._log.transaction() as tx:
            tx.execute(
                "INSERT INTO url_secret (id, secret) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET secret = excluded.secret",
                (secret,),
            )
        return secret
