"""Webhooks on PostgreSQL: the same tables and columns as on SQLite (``ledger.sqlite.webhooks``):
``webhooks`` (each subscription's folded state), ``webhook_secrets``, ``webhook_deliveries``
(the outbox, written in the command's transaction, leased and updated by the dispatchers of
every node), ``webhook_attempts`` and ``webhook_health``.

Times are ``codec.timestamp`` text in ``COLLATE "C"`` columns, so they sort and compare as on
SQLite and come back exactly as written. The statements a dispatcher runs inside a write
transaction are one round trip each (a data-modifying CTE where SQLite runs two statements).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

import msgspec
import psycopg

from ledger import codec
from ledger.log import DELIVERED, PENDING, Delivery, DeliveryAttempt, WebhookSecrets
from ledger.postgres.log import PostgresLog
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
from ledger.webhooks import ACTIVE, DELETED, WebhookState

#: The placeholders of a delivery row, typed (a column of NULLs still has its column's type).
DELIVERY_PLACEHOLDERS = (
    "%s::text, %s::text, %s::text, %s::text, %s::integer, %s::bigint, %s::text, %s::text,"
    " %s::text, %s::text, %s::integer, %s::text, %s::integer, %s::text, %s::text"
)
#: Deliveries inserted per statement.
INSERT_CHUNK = 1_000


class PostgresWebhooks:
    """``ledger.log.WebhookStore`` on the database of a ``PostgresLog``."""

    def __init__(self, log: PostgresLog) -> None:
        self._log = log
        self._state = msgspec.json.Decoder(WebhookState)

    # -- subscriptions ----------------------------------------------------------------------

    def save_webhook(self, tx: psycopg.Connection, state: WebhookState) -> None:
        assert state.created_at is not None
        tx.execute(
            "INSERT INTO webhooks (webhook_id, owner, status, created_at, state)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (webhook_id) DO UPDATE SET owner = excluded.owner,"
            " status = excluded.status, created_at = excluded.created_at,"
            " state = excluded.state",
            (
                state.webhook_id,
                state.owner,
                state.status,
                codec.timestamp(state.created_at),
                codec.encode_str(state),
            ),
        )

    def load_webhook(
        self, webhook_id: str, *, tx: psycopg.Connection | None = None
    ) -> WebhookState | None:
        row = self._log.fetchone(
            "SELECT state FROM webhooks WHERE webhook_id = %s", (webhook_id,), tx=tx
        )
        return self._state.decode(row[0]) if row else None

    def list_webhooks(
        self, owner: str | None, *, tx: psycopg.Connection | None = None
    ) -> list[WebhookState]:
        if owner is None:
            rows = self._log.fetchall(
                "SELECT state FROM webhooks WHERE status != %s ORDER BY created_at, webhook_id",
                (DELETED,),
                tx=tx,
            )
        else:
            rows = self._log.fetchall(
                "SELECT state FROM webhooks WHERE owner = %s AND status != %s"
                " ORDER BY created_at, webhook_id",
                (owner, DELETED),
                tx=tx,
            )
        return [self._state.decode(r[0]) for r in rows]

    def listening(self, tx: psycopg.Connection, owner: str) -> list[WebhookState]:
        rows = tx.execute(
            "SELECT state FROM webhooks WHERE status = %s AND (owner = %s OR owner IS NULL)"
            " ORDER BY created_at, webhook_id",
            (ACTIVE, owner),
        ).fetchall()
        return [self._state.decode(r[0]) for r in rows]

    def stored_webhooks(self, *, tx: psycopg.Connection | None = None) -> Iterator[WebhookState]:
        for (state,) in self._log.walk("SELECT state FROM webhooks ORDER BY webhook_id", tx=tx):
            yield self._state.decode(state)

    def clear_webhooks(self, tx: psycopg.Connection) -> None:
        tx.execute("DELETE FROM webhooks")

    # -- secrets ----------------------------------------------------------------------------

    def set_secrets(self, tx: psycopg.Connection, webhook_id: str, secrets: WebhookSecrets) -> None:
        tx.execute(
            "INSERT INTO webhook_secrets (webhook_id, secret, previous, previous_until)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (webhook_id) DO UPDATE SET secret = excluded.secret,"
            " previous = excluded.previous, previous_until = excluded.previous_until",
            (webhook_id, secrets.secret, secrets.previous, _time(secrets.previous_until)),
        )

    def secrets(
        self, webhook_id: str, *, tx: psycopg.Connection | None = None
    ) -> WebhookSecrets | None:
        row = self._log.fetchone(
            f"SELECT {SECRET_COLUMNS} FROM webhook_secrets WHERE webhook_id = %s",
            (webhook_id,),
            tx=tx,
        )
        return row_to_secrets(row) if row is not None else None

    # -- deliveries -------------------------------------------------------------------------

    def add_deliveries(self, tx: psycopg.Connection, deliveries: Sequence[Delivery]) -> None:
        # One statement for a command's deliveries (in a write transaction's pipeline, no round
        # trip), in chunks that keep under the protocol's 65,535 parameters.
        for start in range(0, len(deliveries), INSERT_CHUNK):
            chunk = deliveries[start : start + INSERT_CHUNK]
            values = ", ".join([f"({DELIVERY_PLACEHOLDERS})"] * len(chunk))
            tx.execute(
                f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES {values}"
                " ON CONFLICT (delivery_id) DO NOTHING",
                [value for d in chunk for value in delivery_params(d)],
            )

    def lease_deliveries(
        self, tx: psycopg.Connection, at: datetime, holder: str, until: datetime, limit: int
    ) -> list[Delivery]:
        """As on SQLite, in one statement. The write transaction holds the ledger's advisory
        lock already; ``FOR UPDATE SKIP LOCKED`` keeps the lease safe without it too (a row
        another transaction is leasing or finishing is passed over, not waited for)."""
        now = codec.timestamp(at)
        columns = ", ".join(f"d.{c.strip()}" for c in DELIVERY_COLUMNS.split(","))
        rows = tx.execute(
            "WITH due AS ("
            " SELECT d.delivery_id FROM webhook_deliveries AS d"
            " WHERE d.status = %s AND d.next_attempt_at <= %s"
            " AND (d.lease_until IS NULL OR d.lease_until <= %s)"
            f" AND {FIRST_IN_LINE}"
            " ORDER BY d.next_attempt_at, d.position LIMIT %s"
            " FOR UPDATE OF d SKIP LOCKED),"
            " leased AS ("
            " UPDATE webhook_deliveries AS d SET lease_holder = %s, lease_until = %s"
            " FROM due WHERE d.delivery_id = due.delivery_id"
            f" RETURNING {columns})"
            f" SELECT {DELIVERY_COLUMNS} FROM leased ORDER BY next_attempt_at, position",
            (PENDING, now, now, limit, holder, codec.timestamp(until)),
        ).fetchall()
        return [row_to_delivery(r) for r in rows]

    def finish_attempt(
        self,
        tx: psycopg.Connection,
        delivery_id: str,
        holder: str,
        attempt: DeliveryAttempt,
        *,
        status: str,
        next_attempt_at: datetime | None,
    ) -> bool:
        # The delivery's update and the attempt's row in one statement: the attempt is written
        # only if the update found the lease still ``holder``'s.
        # A retry asked for while this attempt was under way (its next_attempt_at moved past
        # the attempt's start) stands unless the attempt delivered it.
        began = codec.timestamp(attempt.at)
        retried = "(%s::text != %s::text AND next_attempt_at > %s::text)"
        done = tx.execute(
            "WITH finished AS ("
            f" UPDATE webhook_deliveries SET status = CASE WHEN {retried} THEN %s ELSE %s END,"
            f" attempts = %s, next_attempt_at = CASE WHEN {retried} THEN next_attempt_at"
            " ELSE %s END, last_status = %s, last_error = %s,"
            f" finished_at = CASE WHEN {retried} THEN NULL ELSE %s END,"
            " lease_holder = NULL, lease_until = NULL"
            " WHERE delivery_id = %s AND lease_holder = %s AND status = %s"
            " RETURNING delivery_id)"
            " INSERT INTO webhook_attempts"
            " (delivery_id, attempt, at, duration_ms, status_code, error, response)"
            " SELECT delivery_id, %s::integer, %s::text, %s::double precision, %s::integer,"
            " %s::text, %s::text FROM finished"
            " ON CONFLICT (delivery_id, attempt) DO UPDATE SET at = excluded.at,"
            " duration_ms = excluded.duration_ms, status_code = excluded.status_code,"
            " error = excluded.error, response = excluded.response"
            " RETURNING 1",
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
                attempt.attempt,
                codec.timestamp(attempt.at),
                attempt.duration_ms,
                attempt.status_code,
                stored_text(attempt.error),
                stored_text(attempt.response),
            ),
        ).fetchall()
        return len(done) == 1

    def retry_delivery(
        self, tx: psycopg.Connection, delivery_id: str, at: datetime
    ) -> Delivery | None:
        # A lease still running is kept (as on SQLite).
        row = tx.execute(
            "UPDATE webhook_deliveries SET status = %s, next_attempt_at = %s, finished_at = NULL"
            f" WHERE delivery_id = %s RETURNING {DELIVERY_COLUMNS}",
            (PENDING, codec.timestamp(at), delivery_id),
        ).fetchone()
        return row_to_delivery(row) if row else None

    def get_delivery(
        self, delivery_id: str, *, tx: psycopg.Connection | None = None
    ) -> Delivery | None:
        row = self._log.fetchone(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE delivery_id = %s",
            (delivery_id,),
            tx=tx,
        )
        return row_to_delivery(row) if row else None

    def list_deliveries(
        self,
        webhook_id: str,
        *,
        after: int = 0,
        limit: int = 100,
        tx: psycopg.Connection | None = None,
    ) -> list[Delivery]:
        rows = self._log.fetchall(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"
            " WHERE webhook_id = %s AND position > %s ORDER BY position, delivery_id LIMIT %s",
            (webhook_id, after, limit),
            tx=tx,
        )
        return [row_to_delivery(r) for r in rows]

    def attempts(
        self, delivery_id: str, *, tx: psycopg.Connection | None = None
    ) -> list[DeliveryAttempt]:
        rows = self._log.fetchall(
            f"SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts"
            " WHERE delivery_id = %s ORDER BY attempt",
            (delivery_id,),
            tx=tx,
        )
        return [row_to_attempt(r) for r in rows]

    def count_failure(self, tx: psycopg.Connection, webhook_id: str, failed: bool) -> int:
        if not failed:
            tx.execute("DELETE FROM webhook_health WHERE webhook_id = %s", (webhook_id,))
            return 0
        row = tx.execute(
            "INSERT INTO webhook_health (webhook_id, consecutive_failures) VALUES (%s, 1)"
            " ON CONFLICT (webhook_id) DO UPDATE"
            " SET consecutive_failures = webhook_health.consecutive_failures + 1"
            " RETURNING consecutive_failures",
            (webhook_id,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def next_due(self, *, tx: psycopg.Connection | None = None) -> datetime | None:
        row = self._log.fetchone(
            "SELECT min(CASE WHEN d.lease_until > d.next_attempt_at THEN d.lease_until"
            " ELSE d.next_attempt_at END) FROM webhook_deliveries AS d WHERE d.status = %s"
            f" AND {FIRST_IN_LINE}",
            (PENDING,),
            tx=tx,
        )
        return _parse(row[0]) if row else None
