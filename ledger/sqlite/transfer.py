"""Export, import and backup of a whole SQLite ledger: the SQLite ``Source`` and ``Sink`` of
``ledger.transfer`` (which holds the format and its checks), and the online backup."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ledger import transfer
from ledger.errors import ImportRefused
from ledger.log import Delivery, DeliveryAttempt, KeyRecord, StoredEvent, WebhookSecrets
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
from ledger.sqlite.connection import connect, create_private

if TYPE_CHECKING:
    from ledger.sqlite.log import SqliteLog


class _Source:
    def __init__(self, log: SqliteLog, conn: sqlite3.Connection) -> None:
        self._log, self._conn = log, conn

    def events(self) -> Iterator[StoredEvent]:
        return self._log.iter_stored(tx=self._conn)

    def blobs(self) -> Iterator[tuple[str, int, bytes]]:
        for sha, size, data in self._conn.execute(
            "SELECT sha256, size, data FROM blobs ORDER BY sha256"
        ):
            yield sha, size, bytes(data)

    def blob_refs(self) -> Iterator[tuple[str, str]]:
        yield from self._conn.execute(
            "SELECT task_id, sha256 FROM blob_refs ORDER BY task_id, sha256"
        )

    def keys(self) -> Iterator[tuple[KeyRecord, str]]:
        for key_id, owner, role, created_at, revoked_at, key_hash in self._conn.execute(
            "SELECT key_id, owner, role, created_at, revoked_at, key_hash FROM api_keys"
            " ORDER BY key_id"
        ):
            record = KeyRecord(
                key_id=key_id, owner=owner, role=role, created_at=created_at, revoked_at=revoked_at
            )
            yield record, key_hash

    def webhook_secrets(self) -> Iterator[tuple[str, WebhookSecrets]]:
        for row in self._conn.execute(
            f"SELECT webhook_id, {SECRET_COLUMNS} FROM webhook_secrets ORDER BY webhook_id"
        ):
            yield row[0], row_to_secrets(row[1:])

    def deliveries(self) -> Iterator[Delivery]:
        for row in self._conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries ORDER BY delivery_id"
        ):
            yield row_to_delivery(row)

    def delivery_attempts(self) -> Iterator[tuple[str, DeliveryAttempt]]:
        for row in self._conn.execute(
            f"SELECT delivery_id, {ATTEMPT_COLUMNS} FROM webhook_attempts"
            " ORDER BY delivery_id, attempt"
        ):
            yield row[0], row_to_attempt(row[1:])

    def webhook_health(self) -> Iterator[tuple[str, int]]:
        yield from self._conn.execute(
            "SELECT webhook_id, consecutive_failures FROM webhook_health ORDER BY webhook_id"
        )


class _Sink:
    def __init__(self, log: SqliteLog) -> None:
        self._log = log

    def has_events(self, tx: sqlite3.Connection) -> bool:
        return tx.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def insert_event(self, tx: sqlite3.Connection, row: dict[str, object]) -> None:
        self._log.insert_row(tx, row)

    def insert_blob(self, tx: sqlite3.Connection, sha256: str, size: int, data: bytes) -> None:
        tx.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
            (sha256, size, data),
        )

    def insert_blob_ref(self, tx: sqlite3.Connection, task_id: str, sha256: str) -> None:
        tx.execute(
            "INSERT OR IGNORE INTO blob_refs (task_id, sha256) VALUES (?, ?)", (task_id, sha256)
        )

    def insert_key(self, tx: sqlite3.Connection, record: KeyRecord, key_hash: str) -> None:
        try:
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
        except sqlite3.IntegrityError:
            raise ImportRefused(
                f"The target database already has a key with id {record.key_id}"
            ) from None

    def insert_webhook_secrets(
        self, tx: sqlite3.Connection, webhook_id: str, secrets: WebhookSecrets
    ) -> None:
        try:
            tx.execute(
                f"INSERT INTO webhook_secrets (webhook_id, {SECRET_COLUMNS}) VALUES (?, ?, ?, ?)",
                secrets_params(webhook_id, secrets),
            )
        except sqlite3.IntegrityError:
            raise ImportRefused(
                f"The target database already has secrets for webhook {webhook_id}"
            ) from None

    def insert_delivery(self, tx: sqlite3.Connection, delivery: Delivery) -> None:
        # Not leased (lease_holder and lease_until are left NULL): whoever imports sends it.
        marks = ", ".join("?" * len(DELIVERY_COLUMNS.split(",")))
        try:
            tx.execute(
                f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES ({marks})",
                delivery_params(delivery),
            )
        except sqlite3.IntegrityError:
            raise ImportRefused(
                f"The target database already has a delivery with id {delivery.delivery_id}"
            ) from None

    def insert_delivery_attempt(
        self, tx: sqlite3.Connection, delivery_id: str, attempt: DeliveryAttempt
    ) -> None:
        try:
            tx.execute(
                f"INSERT INTO webhook_attempts (delivery_id, {ATTEMPT_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                attempt_params(delivery_id, attempt),
            )
        except sqlite3.IntegrityError:
            raise ImportRefused(
                f"The target database already has attempt {attempt.attempt} of delivery"
                f" {delivery_id}"
            ) from None

    def insert_webhook_health(
        self, tx: sqlite3.Connection, webhook_id: str, consecutive_failures: int
    ) -> None:
        try:
            tx.execute(
                "INSERT INTO webhook_health (webhook_id, consecutive_failures) VALUES (?, ?)",
                (webhook_id, consecutive_failures),
            )
        except sqlite3.IntegrityError:
            raise ImportRefused(
                f"The target database already has a failure count for webhook {webhook_id}"
            ) from None


def export_records(log: SqliteLog) -> Iterator[dict[str, object]]:
    """The whole log as records (see ``ledger.transfer``), from one read snapshot."""
    with log.read_snapshot() as conn:
        yield from transfer.export_records(_Source(log, conn))


def import_records(
    log: SqliteLog,
    records: Iterable[dict[str, object]],
    *,
    tx: sqlite3.Connection,
    progress: Callable[[int], None] | None = None,
) -> int:
    return transfer.import_records(_Sink(log), records, tx=tx, progress=progress)


def backup(log: SqliteLog, destination: str | Path) -> None:
    """An online, consistent copy of the whole database (SQLite's backup API): writers keep
    going while it runs, and the copy is the database as of one moment."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists")
    create_private(destination)
    target = sqlite3.connect(str(destination))
    try:
        source = connect(log.path, busy_timeout_ms=log.busy_timeout_ms)
        try:
            source.backup(target)
        finally:
            source.close()
    finally:
        target.close()
