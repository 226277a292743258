"""The read models' tables in SQLite: ``tasks`` (one row per task: its folded state and the
columns the queries filter on), ``queue`` (claimable tasks in FIFO order) and the event feed.

Which tasks a query may show is decided by the domain, not here: the row's ``visible_until``
column is ``decider.visible_until(state)`` (when a live task stops being visible: a finished
task at its ``expires_at``), and the queries only compare it with the time they are given.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime

import msgspec

from ledger import codec
from ledger.decider import visible_until
from ledger.events import PROCESSING
from ledger.log import FeedQuery, RecordedEvent, TaskQuery, stream_id_for
from ledger.sqlite.connection import EVENT_COLUMNS, row_to_recorded
from ledger.sqlite.log import SqliteLog
from ledger.state import TaskState

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    visible_until TEXT,
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
CREATE INDEX IF NOT EXISTS tasks_visible_until ON tasks (visible_until)
    WHERE gone IS NULL AND visible_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue (
    task_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_fifo ON queue (position);
CREATE TABLE IF NOT EXISTS checkpoints (
    task_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (task_id, version)
);
"""


def _ts(value: datetime | None) -> str | None:
    return codec.timestamp(value) if value is not None else None


def add_visible_until(conn: sqlite3.Connection) -> None:
    """Migration: a ``tasks`` table from before ``visible_until`` gets the column, filled from
    each row's state (its old ``expires_at`` column and index are no longer used)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if not columns or "visible_until" in columns:
        return
    conn.execute("ALTER TABLE tasks ADD COLUMN visible_until TEXT")
    conn.execute("DROP INDEX IF EXISTS tasks_expiry")
    rows = conn.execute("SELECT task_id, state FROM tasks").fetchall()
    for task_id, state in rows:
        try:
            until = _ts(visible_until(codec.decode_state(state)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            # A row edited by hand: ``verify`` reports it and ``rebuild`` writes it afresh.
            continue
        conn.execute("UPDATE tasks SET visible_until = ? WHERE task_id = ?", (until, task_id))


MIGRATIONS = (add_visible_until,)


class _Columns(msgspec.Struct, kw_only=True):
    """The fields of a stored state the query columns come from (decoding only these skips
    the configuration, which is most of a state)."""

    task_id: str
    version: int = 0
    owner: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    lease_until: datetime | None = None
    gone: str | None = None


_columns_decoder = msgspec.json.Decoder(_Columns)


def _columns_of(state_json: str) -> TaskState:
    """A state holding just what the query columns are computed from."""
    return TaskState(**msgspec.structs.asdict(_columns_decoder.decode(state_json)))


class SqliteViews:
    """``ledger.log.TaskViews`` on the SQLite file of a ``SqliteLog``."""

    def __init__(self, log: SqliteLog) -> None:
        self._log = log

    def _conn(self, tx: sqlite3.Connection | None) -> sqlite3.Connection:
        return tx if tx is not None else self._log.reader()

    # -- tasks ------------------------------------------------------------------------------

    def load_task(self, task_id: str, *, tx: sqlite3.Connection | None = None) -> TaskState | None:
        row = (
            self._conn(tx)
            .execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,))
            .fetchone()
        )
        return codec.decode_state(row[0]) if row else None

    def save_task(self, tx: sqlite3.Connection, state: TaskState) -> None:
        tx.execute(
            "INSERT INTO tasks (task_id, owner, status, created_at, visible_until, lease_until,"
            " gone, version, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id) DO UPDATE SET owner = excluded.owner,"
            " status = excluded.status, created_at = excluded.created_at,"
            " visible_until = excluded.visible_until, lease_until = excluded.lease_until,"
            " gone = excluded.gone, version = excluded.version, state = excluded.state",
            (state.task_id, *self._columns(state), codec.encode_str(state)),
        )

    def list_tasks(
        self, query: TaskQuery, *, tx: sqlite3.Connection | None = None
    ) -> list[TaskState]:
        where = ["gone IS NULL", "(visible_until IS NULL OR visible_until > ?)"]
        params: list[object] = [codec.timestamp(query.at)]
        if query.owner is not None:
            where.append("owner = ?")
            params.append(query.owner)
        if query.start is not None:
            where.append("created_at >= ?")
            params.append(codec.timestamp(query.start))
        if query.end is not None:
            where.append("created_at <= ?")
            params.append(codec.timestamp(query.end))
        sql = (
            f"SELECT state FROM tasks WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, task_id DESC LIMIT ? OFFSET ?"
        )
        params += [query.limit if query.limit is not None else -1, query.offset]
        return [codec.decode_state(row[0]) for row in self._conn(tx).execute(sql, params)]

    def stored_states(
        self, *, tx: sqlite3.Connection | None = None
    ) -> Iterator[tuple[str, TaskState]]:
        rows = self._conn(tx).execute("SELECT task_id, state FROM tasks ORDER BY task_id")
        for task_id, state in rows:
            yield task_id, codec.decode_state(state)

    def _columns(self, state: TaskState) -> tuple[object, ...]:
        return (
            state.owner,
            state.status,
            _ts(state.created_at),
            _ts(visible_until(state)),
            _ts(state.lease_until) if state.status == PROCESSING else None,
            state.gone,
            state.version,
        )

    def stale_rows(self, *, tx: sqlite3.Connection | None = None) -> list[tuple[str, str]]:
        names = ("owner", "status", "created_at", "visible_until", "lease_until", "gone", "version")
        found = []
        for row in self._conn(tx).execute(
            f"SELECT task_id, state, {', '.join(names)} FROM tasks ORDER BY task_id"
        ):
            try:
                expected = self._columns(_columns_of(row[1]))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # reported by verify as a row that differs from its events
            wrong = [
                f"{name} is {stored!r}, its state says {want!r}"
                for name, stored, want in zip(names, row[2:], expected, strict=True)
                if stored != want
            ]
            if wrong:
                found.append((row[0], "; ".join(wrong)))
        return found

    def due_leases(self, at: datetime, limit: int = 500) -> list[str]:
        rows = self._log.reader().execute(
            "SELECT task_id FROM tasks WHERE gone IS NULL AND lease_until IS NOT NULL"
            " AND lease_until <= ? ORDER BY lease_until LIMIT ?",
            (codec.timestamp(at), limit),
        )
        return [row[0] for row in rows]

    def due_expiries(self, at: datetime, limit: int = 500) -> list[str]:
        rows = self._log.reader().execute(
            "SELECT task_id FROM tasks WHERE gone IS NULL AND visible_until IS NOT NULL"
            " AND visible_until <= ? ORDER BY visible_until LIMIT ?",
            (codec.timestamp(at), limit),
        )
        return [row[0] for row in rows]

    # -- queue ------------------------------------------------------------------------------

    def queue_head(self, *, tx: sqlite3.Connection | None = None) -> str | None:
        row = (
            self._conn(tx).execute("SELECT task_id FROM queue ORDER BY position LIMIT 1").fetchone()
        )
        return row[0] if row else None

    def enqueue(self, tx: sqlite3.Connection, task_id: str, position: int) -> None:
        tx.execute(
            "INSERT OR REPLACE INTO queue (task_id, position) VALUES (?, ?)", (task_id, position)
        )

    def dequeue(self, tx: sqlite3.Connection, task_id: str) -> None:
        tx.execute("DELETE FROM queue WHERE task_id = ?", (task_id,))

    def queue_entries(self, *, tx: sqlite3.Connection | None = None) -> list[tuple[str, int]]:
        rows = self._conn(tx).execute("SELECT task_id, position FROM queue ORDER BY position")
        return [(r[0], r[1]) for r in rows]

    def clear(self, tx: sqlite3.Connection) -> None:
        tx.execute("DELETE FROM tasks")
        tx.execute("DELETE FROM queue")
        tx.execute("DELETE FROM checkpoints")

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, tx: sqlite3.Connection, state: TaskState) -> None:
        tx.execute(
            "INSERT OR REPLACE INTO checkpoints (task_id, version, state) VALUES (?, ?, ?)",
            (state.task_id, state.version, codec.encode_str(state)),
        )

    def load_checkpoint(
        self, task_id: str, version: int, *, tx: sqlite3.Connection | None = None
    ) -> TaskState | None:
        """One seek in the primary key, backwards from ``version``."""
        row = (
            self._conn(tx)
            .execute(
                "SELECT state FROM checkpoints WHERE task_id = ? AND version <= ?"
                " ORDER BY version DESC LIMIT 1",
                (task_id, version),
            )
            .fetchone()
        )
        return codec.decode_state(row[0]) if row else None

    def stored_checkpoints(
        self, *, tx: sqlite3.Connection | None = None
    ) -> Iterator[tuple[str, int, TaskState]]:
        rows = self._conn(tx).execute(
            "SELECT task_id, version, state FROM checkpoints ORDER BY task_id, version"
        )
        for task_id, version, state in rows:
            yield task_id, version, codec.decode_state(state)

    # -- the event feed ---------------------------------------------------------------------

    def feed(
        self, query: FeedQuery, *, tx: sqlite3.Connection | None = None
    ) -> list[RecordedEvent]:
        """Keyset paging on the events' primary key: a page's cost does not grow with the log."""
        columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        where = ["e.position > ?"]
        params: list[object] = [query.after]
        if query.task_id is not None:
            where.append("e.stream_id = ?")
            params.append(stream_id_for(query.task_id))
        if query.types:
            where.append(f"e.type IN ({', '.join('?' * len(query.types))})")
            params.extend(query.types)
        join = ""
        if query.owner is not None:
            join = "JOIN tasks t ON t.task_id = substr(e.stream_id, 6)"
            where.append("t.owner = ?")
            params.append(query.owner)
        sql = (
            f"SELECT {columns} FROM events e {join} WHERE {' AND '.join(where)}"
            " ORDER BY e.position LIMIT ?"
        )
        params.append(query.limit)
        return [row_to_recorded(row) for row in self._conn(tx).execute(sql, params)]
