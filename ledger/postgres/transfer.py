"""Export, import and backup of a whole PostgreSQL ledger: its ``Source`` and ``Sink`` of
``ledger.transfer`` (which holds the format and its checks). A backup is a SQLite ledger file
holding the same records, written from one REPEATABLE READ snapshot while the nodes keep
writing; ``pg_dump`` is the other way (see docs/operations.md, "Scaling out")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psycopg

from ledger import transfer
from ledger.errors import ImportRefused
from ledger.log import Delivery, DeliveryAttempt, KeyRecord, StoredEvent, WebhookSecrets
from ledger.postgres.log import PostgresLog
from ledger.postgres.records import insert_key
from ledger.postgres.webhooks import DELIVERY_PLACEHOLDERS
from ledger.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    SECRET_COLUMNS,
    attempt_params,
    delivery_params,
    row_to_attempt,
    row_to_delivery,
    row_to_secrets,
    secrets_params,
)


class _Source:
    def __init__(self, log: PostgresLog, conn: psycopg.Connection) -> None:
        self._log, self._conn = log, conn

    def events(self) -> Iterator[StoredEvent]:
        return self._log.iter_stored(tx=self._conn)

    def blobs(self) -> Iterator[tuple[str, int, bytes]]:
        for sha, size, data in self._log.walk(
            "SELECT sha256, size, data FROM blobs ORDER BY sha256", tx=self._conn
        ):
            yield sha, size, bytes(data)

    def blob_refs(self) -> Iterator[tuple[str, str]]:
        rows = self._log.walk(
            "SELECT task_id, sha256 FROM blob_refs ORDER BY task_id, sha256", tx=self._conn
        )
        yield from ((row[0], row[1]) for row in rows)

    def keys(self) -> Iterator[tuple[KeyRecord, str]]:
        for key_id, owner, role, created_at, revoked_at, key_hash in self._log.walk(
            "SELECT key_id, owner, role, created_at, revoked_at, key_hash FROM api_keys"
            " ORDER BY key_id",
            tx=self._conn,
        ):
            record = KeyRecord(
                key_id=key_id, owner=owner, role=role, created_at=created_at, revoked_at=revoked_at
            )
            yield record, key_hash

    def webhook_secrets(self) -> Iterator[tuple[str, WebhookSecrets]]:
        for row in self._log.walk(
            f"SELECT webhook_id, {SECRET_COLUMNS} FROM webhook_secrets ORDER BY webhook_id",
            tx=self._conn,
        ):
            yield row[0], row_to_secrets(row[1:])

    def deliveries(self) -> Iterator[Delivery]:
        for row in self._log.walk(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries ORDER BY delivery_id",
            tx=self._conn,
        ):
            yield row_to_delivery(row)

    def delivery_attempts(self) -> Iterator[tuple[str, DeliveryAttempt]]:
        for row in self._log.walk(
            f"SELECT delivery_id, {ATTEMPT_COLUMNS} FROM webhook_attempts"
            " ORDER BY delivery_id, attempt",
            tx=self._conn,
        ):
            yield row[0], row_to_attempt(row[1:])

    def webhook_health(self) -> Iterator[tuple[str, int]]:
        rows = self._log.walk(
            "SELECT webhook_id, consecutive_failures FROM webhook_health ORDER BY webhook_id",
            tx=self._conn,
        )
        yield from ((row[0], row[1]) for row in rows)


class _Sink:
    def __init__(self, log: PostgresLog) -> None:
        self._log = log

    def has_events(self, tx: psycopg.Connection) -> bool:
        return tx.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def insert_event(self, tx: psycopg.Connection, row: dict[str, object]) -> None:
        self._log.insert_row(tx, row)

    def insert_blob(self, tx: psycopg.Connection, sha256: str, size: int, data: bytes) -> None:
        tx.execute(
            "INSERT INTO blobs (sha256, size, data) VALUES (%s, %s, %s)"
            " ON CONFLICT (sha256) DO NOTHING",
            (sha256, size, data),
        )

    def insert_blob_ref(self, tx: psycopg.Connection, task_id: str, sha256: str) -> None:
        tx.execute(
            "INSERT INTO blob_refs (task_id, sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (task_id, sha256),
        )

    def insert_key(self, tx: psycopg.Connection, record: KeyRecord, key_hash: str) -> None:
        if not insert_key(tx, record, key_hash):
            raise ImportRefused(f"The target database already has a key with id {record.key_id}")

    # Each insert reads its answer at once (``RETURNING``), so a taken id is refused here, not
    # at a later statement of a pipeline.

    def insert_webhook_secrets(
        self, tx: psycopg.Connection, webhook_id: str, secrets: WebhookSecrets
    ) -> None:
        added = tx.execute(
            f"INSERT INTO webhook_secrets (webhook_id, {SECRET_COLUMNS})"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (webhook_id) DO NOTHING RETURNING 1",
            secrets_params(webhook_id, secrets),
        ).fetchone()
        if added is None:
            raise ImportRefused(f"The target database already has secrets for webhook {webhook_id}")

    def insert_delivery(self, tx: psycopg.Connection, delivery: Delivery) -> None:
        # Not leased (lease_holder and lease_until are left NULL): whoever imports sends it.
        added = tx.execute(
            f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES ({DELIVERY_PLACEHOLDERS})"
            " ON CONFLICT (delivery_id) DO NOTHING RETURNING 1",
            delivery_params(delivery),
        ).fetchone()
        if added is None:
            raise ImportRefused(
                f"The target database already has a delivery with id {delivery.delivery_id}"
            )

    def insert_delivery_attempt(
        self, tx: psycopg.Connection, delivery_id: str, attempt: DeliveryAttempt
    ) -> None:
        added = tx.execute(
            f"INSERT INTO webhook_attempts (delivery_id, {ATTEMPT_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (delivery_id, attempt) DO NOTHING RETURNING 1",
            attempt_params(delivery_id, attempt),
        ).fetchone()
        if added is None:
            raise ImportRefused(
                f"The target database already has attempt {attempt.attempt} of delivery"
                f" {delivery_id}"
            )

    def insert_webhook_health(
        self, tx: psycopg.Connection, webhook_id: str, consecutive_failures: int
    ) -> None:
        added = tx.execute(
            "INSERT INTO webhook_health (webhook_id, consecutive_failures) VALUES (%s, %s)"
            " ON CONFLICT (webhook_id) DO NOTHING RETURNING 1",
            (webhook_id, consecutive_failures),
        ).fetchone()
        if added is None:
            raise ImportRefused(
                f"The target database already has a failure count for webhook {webhook_id}"
            )


def export_records(log: PostgresLog) -> Iterator[dict[str, object]]:
    """The whole log as records (see ``ledger.transfer``), from one REPEATABLE READ snapshot."""
    with log.read_snapshot() as conn:
        yield from transfer.export_records(_Source(log, conn))


def import_records(
    log: PostgresLog,
    records: Iterable[dict[str, object]],
    *,
    tx: psycopg.Connection,
    progress: Callable[[int], None] | None = None,
) -> int:
    return transfer.import_records(_Sink(log), records, tx=tx, progress=progress)


#: Every table of a ledger, with its columns: the same on both backends.
TABLES = {
    "events": (
        "position, stream_id, version, type, data, recorded_at, actor_key_id, actor_role,"
        " request_id, idempotency_key, hash"
    ),
    "blobs": "sha256, size, data",
    "blob_refs": "task_id, sha256",
    "tasks": "task_id, owner, status, created_at, visible_until, lease_until, gone, version, state",
    "queue": "task_id, position",
    "checkpoints": "task_id, version, state",
    "feed": "owner, position, task_id, type",
    "api_keys": "key_id, owner, role, key_hash, created_at, revoked_at",
    "idempotency_outcomes": "key_id, idempotency_key, fingerprint, outcome, created_at",
    "url_secret": "id, secret",
    "webhooks": "webhook_id, owner, status, created_at, state",
    "webhook_secrets": "webhook_id, secret, previous, previous_until",
    "webhook_deliveries": (
        "delivery_id, webhook_id, owner, task_id, version, position, event_type, url, created_at,"
        " status, attempts, next_attempt_at, lease_holder, lease_until, last_status, last_error,"
        " finished_at"
    ),
    "webhook_attempts": "delivery_id, attempt, at, duration_ms, status_code, error, response",
    "webhook_health": "webhook_id, consecutive_failures",
}


def backup(log: PostgresLog, destination: str | Path) -> None:
    """A SQLite ledger file at ``destination`` holding every table of this ledger as of one
    moment (one REPEATABLE READ snapshot, taken while the nodes keep writing): a file any
    taskledger command opens, and ``taskledger export`` turns back into PostgreSQL."""
    from ledger.sqlite import SqliteBackend

    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists")
    copy = SqliteBackend(destination)
    try:
        with log.read_snapshot() as conn, copy.log.transaction() as tx:
            for table, columns in TABLES.items():
                marks = ", ".join("?" * len(columns.split(",")))
                insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
                batch: list[tuple[object, ...]] = []
                for row in log.walk(f"SELECT {columns} FROM {table}", tx=conn):
                    batch.append(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
                    if len(batch) >= 1000:
                        tx.executemany(insert, batch)
                        batch.clear()
                if batch:
                    tx.executemany(insert, batch)
    except BaseException:
        copy.close()
        destination.unlink(missing_ok=True)
        raise
    copy.close()
