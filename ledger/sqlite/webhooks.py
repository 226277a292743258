"""Webhooks in SQLite: ``webhooks`` (each subscription's folded state: a projection of its
``webhook-`` stream), ``webhook_secrets`` (signing secrets: records, never events),
``webhook_deliveries`` (the outbox: one row per subscription and task event, written in the
command's transaction, leased and updated by the dispatchers), ``webhook_attempts`` (every try
of a delivery) and ``webhook_health`` (each subscription's run of failed deliveries).

Times are stored as ``codec.timestamp`` text, which sorts as it compares.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime

import msgspec

from ledger import codec
from ledger.log import DELIVERED, PENDING, Delivery, DeliveryAttempt, WebhookSecrets
from ledger.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    FIRST_IN_LINE,
    SECRET_COLUMNS,
    delivery_params,
    row_to_attempt,
    row_to_delivery,
    row_to_secrets,
    stored_text,
)
from ledger.rows import parse_timestamp as _parse
from ledger.rows import timestamp as _time
from ledger.sqlite.log import SqliteLog
from ledger.webhooks import ACTIVE, DELETED, WebhookState

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id TEXT PRIMARY KEY,
    owner TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_owner ON webhooks (owner, created_at) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS webhook_secrets (
    webhook_id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    previous TEXT,
    previous_until TEXT
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    task_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_holder TEXT,
    lease_until TEXT,
    last_status INTEGER,
    last_error TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_task
    ON webhook_deliveries (webhook_id, task_id, position) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON webhook_deliveries (webhook_id, position);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    response TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_health (
    webhook_id TEXT PRIMARY KEY,
    consecutive_failures INTEGER NOT NULL
);
"""


class SqliteWebhooks:
    """``ledger.log.WebhookStore`` on the SQLite file of a ``SqliteLog``."""

    def __init__(self, log: SqliteLog) -> None:
        self._log = log
        self._state = msgspec.json.Decoder(WebhookState)

    def _conn(self, tx: sqlite3.Connection | None) -> sqlite3.Connection:
        return tx if tx is not None else self._log.reader()

    # -- subscriptions ----------------------------------------------------------------------

    def save_webhook(self, tx: sqlite3.Connection, state: WebhookState) -> None:
        assert state.created_at is not None
        tx.execute(
            "INSERT OR REPLACE INTO webhooks (webhook_id, owner, status, created_at, state)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                state.webhook_id,
                state.owner,
                state.status,
                codec.timestamp(state.created_at),
                codec.encode_str(state),
            ),
        )

    def load_webhook(
        self, webhook_id: str, *, tx: sqlite3.Connection | None = None
    ) -> WebhookState | None:
        row = (
            self._conn(tx)
            .execute("SELECT state FROM webhooks WHERE webhook_id = ?", (webhook_id,))
            .fetchone()
        )
        return self._state.decode(row[0]) if row else None

    def list_webhooks(
        self, owner: str | None, *, tx: sqlite3.Connection | None = None
    ) -> list[WebhookState]:
        if owner is None:
            rows = self._conn(tx).execute(
                "SELECT state FROM webhooks WHERE status != ? ORDER BY created_at, webhook_id",
                (DELETED,),
            )
        else:
            rows = self._conn(tx).execute(
                "SELECT state FROM webhooks WHERE owner = ? AND status != ?"
                " ORDER BY created_at, webhook_id",
                (owner, DELETED),
            )
        return [self._state.decode(r[0]) for r in rows]

    def listening(self, tx: sqlite3.Connection, owner: str) -> list[WebhookState]:
        rows = tx.execute(
            "SELECT state FROM webhooks WHERE status = ? AND (owner = ? OR owner IS NULL)"
            " ORDER BY created_at, webhook_id",
            (ACTIVE, owner),
        )
        return [self._state.decode(r[0]) for r in rows]

    def stored_webhooks(self, *, tx: sqlite3.Connection | None = None) -> Iterator[WebhookState]:
        rows = self._conn(tx).execute("SELECT state FROM webhooks ORDER BY webhook_id")
        for (state,) in rows:
            yield self._state.decode(state)

    def clear_webhooks(self, tx: sqlite3.Connection) -> None:
        tx.execute("DELETE FROM webhooks")

    # -- secrets ----------------------------------------------------------------------------

    def set_secrets(self, tx: sqlite3.Connection, webhook_id: str, secrets: WebhookSecrets) -> None:
        tx.execute(
            "INSERT OR REPLACE INTO webhook_secrets (webhook_id, secret, previous, previous_until)"
            " VALUES (?, ?, ?, ?)",
            (webhook_id, secrets.secret, secrets.previous, _time(secrets.previous_until)),
        )

    def secrets(
        self, webhook_id: str, *, tx: sqlite3.Connection | None = None
    ) -> WebhookSecrets | None:
        row = (
            self._conn(tx)
            .execute(
                f"SELECT {SECRET_COLUMNS} FROM webhook_secrets WHERE webhook_id = ?",
                (webhook_id,),
            )
            .fetchone()
        )
        return row_to_secrets(row) if row is not None else None

    # -- deliveries -------------------------------------------------------------------------

    def add_deliveries(self, tx: sqlite3.Connection, deliveries: Sequence[Delivery]) -> None:
        tx.executemany(
            f"INSERT OR IGNORE INTO webhook_deliveries ({DELIVERY_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [delivery_params(d) for d in deliveries],
        )

    def lease_deliveries(
        self, tx: sqlite3.Connection, at: datetime, holder: str, until: datetime, limit: int
    ) -> list[Delivery]:
        now = codec.timestamp(at)
        rows = tx.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries AS d"
            " WHERE d.status = ? AND d.next_attempt_at <= ?"
            " AND (d.lease_until IS NULL OR d.lease_until <= ?)"
            f" AND {FIRST_IN_LINE}"
            " ORDER BY d.next_attempt_at, d.position LIMIT ?",
            (PENDING, now, now, limit),
        ).fetchall()
        if rows:
            tx.executemany(
                "UPDATE webhook_deliveries SET lease_holder = ?, lease_until = ?"
                " WHERE delivery_id = ?",
                [(holder, codec.timestamp(until), r[0]) for r in rows],
            )
        return [row_to_delivery(r) for r in rows]

    def finish_attempt(
        self,
        tx: sqlite3.Connection,
        delivery_id: str,
        holder: str,
        attempt: DeliveryAttempt,
        *,
        status: str,
        next_attempt_at: datetime | None,
    ) -> bool:
        # A retry asked for while this attempt was under way (its next_attempt_at moved past
        # the attempt's start) stands unless the attempt delivered it.
        began = codec.timestamp(attempt.at)
        retried = "(? != ? AND next_attempt_at > ?)"
        cursor = tx.execute(
            f"UPDATE webhook_deliveries SET status = CASE WHEN {retried} THEN ? ELSE ? END,"
            f" attempts = ?, next_attempt_at = CASE WHEN {retried} THEN next_attempt_at"
            " ELSE ? END, last_status = ?, last_error = ?,"
            f" finished_at = CASE WHEN {retried} THEN NULL ELSE ? END,"
            " lease_holder = NULL, lease_until = NULL"
            " WHERE delivery_id = ? AND lease_holder = ? AND status = ?",
            (
                *(status, DELIVERED, began),
                PENDING,
                status,
                attempt.attempt,
                *(status, DELIVERED, began),
                _time(next_attempt_at),
                attempt.status_code,
                stored_text(attempt.error),
                *(status, DELIVERED, began),
                None if status == PENDING else began,
                delivery_id,
                holder,
                PENDING,
            ),
        )
        if cursor.rowcount != 1:
            return False
        tx.execute(
            "INSERT OR REPLACE INTO webhook_attempts"
            " (delivery_id, attempt, at, duration_ms, status_code, error, response)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                delivery_id,
                attempt.attempt,
                codec.timestamp(attempt.at),
                attempt.duration_ms,
                attempt.status_code,
                stored_text(attempt.error),
                stored_text(attempt.response),
            ),
        )
        return True

    def retry_delivery(
        self, tx: sqlite3.Connection, delivery_id: str, at: datetime
    ) -> Delivery | None:
        # A lease still running is kept: the attempt in flight is not sent a second time at
        # once, and its holder's finish_attempt still counts.
        tx.execute(
            "UPDATE webhook_deliveries SET status = ?, next_attempt_at = ?, finished_at = NULL"
            " WHERE delivery_id = ?",
            (PENDING, codec.timestamp(at), delivery_id),
        )
        return self.get_delivery(delivery_id, tx=tx)

    def get_delivery(
        self, delivery_id: str, *, tx: sqlite3.Connection | None = None
    ) -> Delivery | None:
        row = (
            self._conn(tx)
            .execute(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE delivery_id = ?",
                (delivery_id,),
            )
            .fetchone()
        )
        return row_to_delivery(row) if row else None

    def list_deliveries(
        self,
        webhook_id: str,
        *,
        after: int = 0,
        limit: int = 100,
        tx: sqlite3.Connection | None = None,
    ) -> list[Delivery]:
        rows = self._conn(tx).execute(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"
            " WHERE webhook_id = ? AND position > ? ORDER BY position, delivery_id LIMIT ?",
            (webhook_id, after, limit),
        )
        return [row_to_delivery(r) for r in rows]

    def attempts(
        self, delivery_id: str, *, tx: sqlite3.Connection | None = None
    ) -> list[DeliveryAttempt]:
        rows = self._conn(tx).execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts"
            " WHERE delivery_id = ? ORDER BY attempt",
            (delivery_id,),
        )
        return [row_to_attempt(r) for r in rows]

    def count_failure(self, tx: sqlite3.Connection, webhook_id: str, failed: bool) -> int:
        if not failed:
            tx.execute("DELETE FROM webhook_health WHERE webhook_id = ?", (webhook_id,))
            return 0
        tx.execute(
            "INSERT INTO webhook_health (webhook_id, consecutive_failures) VALUES (?, 1)"
            " ON CONFLICT (webhook_id) DO UPDATE"
            " SET consecutive_failures = consecutive_failures + 1",
            (webhook_id,),
        )
        (count,) = tx.execute(
            "SELECT consecutive_failures FROM webhook_health WHERE webhook_id = ?", (webhook_id,)
        ).fetchone()
        return int(count)

    def next_due(self, *, tx: sqlite3.Connection | None = None) -> datetime | None:
        (value,) = (
            self._conn(tx)
            .execute(
                "SELECT min(CASE WHEN d.lease_until > d.next_attempt_at THEN d.lease_until"
                " ELSE d.next_attempt_at END) FROM webhook_deliveries AS d WHERE d.status = ?"
                f" AND {FIRST_IN_LINE}",
                (PENDING,),
            )
            .fetchone()
        )
        return _parse(value)
