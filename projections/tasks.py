"""The ``tasks`` projection: one row per task holding its folded state and version.

Updated inline (same transaction as the append). ``GET /task/{id}`` reads one row by primary
key; lists read the ``(owner, created_at)`` index. The row's ``state`` column is exactly
``fold(read_stream(task))``, which ``taskledger verify`` checks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from ledger import codec
from ledger.decider import initial_state
from ledger.events import PROCESSING
from ledger.log import RecordedEvent
from ledger.state import TaskState

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    lease_until TEXT,
    gone TEXT,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_owner_created ON tasks (owner, created_at, task_id)
    WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at, task_id) WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (lease_until)
    WHERE gone IS NULL AND lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_at)
    WHERE gone IS NULL AND expires_at IS NOT NULL;
"""


def _ts(value: datetime | None) -> str | None:
    return codec.timestamp(value) if value is not None else None


class TasksProjection:
    schema = SCHEMA

    # -- write side (inside the append transaction) -----------------------------------------

    def load(self, tx: sqlite3.Connection, task_id: str) -> TaskState:
        return self.get(tx, task_id) or initial_state(task_id)

    def apply(
        self,
        tx: sqlite3.Connection,
        before: TaskState,
        after: TaskState,
        recorded: Sequence[RecordedEvent],
    ) -> None:
        self.upsert(tx, after)

    def upsert(self, conn: sqlite3.Connection, state: TaskState) -> None:
        conn.execute(
            "INSERT INTO tasks (task_id, owner, status, created_at, expires_at, lease_until, gone,"
            " version, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id) DO UPDATE SET owner = excluded.owner,"
            " status = excluded.status, created_at = excluded.created_at,"
            " expires_at = excluded.expires_at, lease_until = excluded.lease_until,"
            " gone = excluded.gone, version = excluded.version, state = excluded.state",
            (
                state.task_id,
                state.owner,
                state.status,
                _ts(state.created_at),
                _ts(state.expires_at),
                _ts(state.lease_until) if state.status == PROCESSING else None,
                state.gone,
                state.version,
                codec.encode_str(state),
            ),
        )

    # -- read side --------------------------------------------------------------------------

    def get(self, conn: sqlite3.Connection, task_id: str) -> TaskState | None:
        row = conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return codec.decode_state(row[0]) if row else None

    def list(
        self,
        conn: sqlite3.Connection,
        *,
        owner: str | None,
        now: datetime,
        limit: int | None = None,
        offset: int = 0,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[TaskState]:
        """Live, unexpired tasks, newest first; ``owner=None`` lists every owner's."""
        # A pending update keeps the old expires_at (as in Chunkr) but is not expired: only
        # terminal tasks expire.
        where = [
            "gone IS NULL",
            "(expires_at IS NULL OR expires_at > ? OR status IN ('Starting', 'Processing'))",
        ]
        params: list[object] = [codec.timestamp(now)]
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if start is not None:
            where.append("created_at >= ?")
            params.append(codec.timestamp(start))
        if end is not None:
            where.append("created_at <= ?")
            params.append(codec.timestamp(end))
        sql = (
            f"SELECT state FROM tasks WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, task_id DESC LIMIT ? OFFSET ?"
        )
        params += [limit if limit is not None else -1, offset]
        return [codec.decode_state(row[0]) for row in conn.execute(sql, params)]

    def due_leases(self, conn: sqlite3.Connection, now: datetime, limit: int = 500) -> list[str]:
        """Tasks whose lease has run out."""
        rows = conn.execute(
            "SELECT task_id FROM tasks WHERE gone IS NULL AND lease_until IS NOT NULL"
            " AND lease_until <= ? ORDER BY lease_until LIMIT ?",
            (codec.timestamp(now), limit),
        )
        return [row[0] for row in rows]

    def due_expiries(self, conn: sqlite3.Connection, now: datetime, limit: int = 500) -> list[str]:
        """Terminal tasks past their ``expires_at``."""
        rows = conn.execute(
            "SELECT task_id FROM tasks WHERE gone IS NULL AND expires_at IS NOT NULL"
            " AND expires_at <= ? AND status IN ('Succeeded', 'Failed', 'Cancelled')"
            " ORDER BY expires_at LIMIT ?",
            (codec.timestamp(now), limit),
        )
        return [row[0] for row in rows]

    def all_ids(self, conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute("SELECT task_id FROM tasks ORDER BY task_id")]

    def clear(self, tx: sqlite3.Connection) -> None:
        tx.execute("DELETE FROM tasks")
