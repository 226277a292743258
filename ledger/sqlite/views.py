"""The read models' tables in SQLite: ``tasks`` (one row per task: its folded state and the
columns the queries filter on), ``queue`` (claimable tasks in FIFO order), ``feed`` (each owner's
feed entries, keyed by owner and position) and the event feed query.

Which tasks a query may show is decided by the domain, not here: the row's ``visible_until``
column is ``decider.visible_until(state)`` (when a live task stops being visible: a finished
task at its ``expires_at``), and the queries only compare it with the time they are given.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime

import msgspec

from ledger import codec
from ledger.decider import visible_until
from ledger.log import FeedEntry, FeedQuery, RecordedEvent, TaskQuery, stream_id_for
from ledger.rows import (
    COLUMN_NAMES,
    EVENT_COLUMNS,
    query_columns,
    row_to_recorded,
    stale_columns,
    timestamp,
)
from ledger.sqlite.log import SqliteLog
from ledger.state import TaskState

#: Each owner's feed entries (``TaskViews.add_to_feed``): an owner's page is one range of the
#: primary key, whatever the other owners' share of the log.
FEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed (
    owner TEXT NOT NULL,
    position INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    type TEXT NOT NULL,
    PRIMARY KEY (owner, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feed_task ON feed (task_id);
"""

SCHEMA = (
    """
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
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status) WHERE gone IS NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    task_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (task_id, version)
);
"""
    + FEED_SCHEMA
)


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
            until = timestamp(visible_until(codec.decode_state(state)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            # A row edited by hand: ``verify`` reports it and ``rebuild`` writes it afresh.
            continue
        conn.execute("UPDATE tasks SET visible_until = ? WHERE task_id = ?", (until, task_id))


def add_feed(conn: sqlite3.Connection) -> None:
    """Migration: a database from before the ``feed`` table gets it, filled from the log and the
    ``tasks`` rows' owner and tombstone: every event of a live task, and of a deleted or expired
    one only its last event, the tombstone (what ``projections.feed`` keeps). A task whose row
    is missing gets no entries: ``verify`` reports them and ``rebuild`` writes them."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "feed" in tables or not {"tasks", "events"} <= tables:
        return  # already there, or a new database (the schema creates it)
    for statement in FEED_SCHEMA.split(";"):  # executescript would COMMIT the migration
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT INTO feed (owner, position, task_id, type)"
        " SELECT t.owner, e.position, t.task_id, e.type"
        " FROM tasks t JOIN events e ON e.stream_id = ? || t.task_id"
        " WHERE t.gone IS NULL OR e.version = t.version",
        (stream_id_for(""),),
    )


MIGRATIONS = (add_visible_until, add_feed)


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

    def prefetch_tasks(self, tx: sqlite3.Connection, task_ids: Sequence[str]) -> None:
        pass  # a read is a lookup in this process: nothing to save by reading ahead

    def save_task(self, tx: sqlite3.Connection, state: TaskState) -> None:
        tx.execute(
            "INSERT INTO tasks (task_id, owner, status, created_at, visible_until, lease_until,"
            " gone, version, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id) DO UPDATE SET owner = excluded.owner,"
            " status = excluded.status, created_at = excluded.created_at,"
            " visible_until = excluded.visible_until, lease_until = excluded.lease_until,"
            " gone = excluded.gone, version = excluded.version, state = excluded.state",
            (state.task_id, *query_columns(state), codec.encode_str(state)),
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

    def stale_rows(self, *, tx: sqlite3.Connection | None = None) -> list[tuple[str, str]]:
        found = []
        for row in self._conn(tx).execute(
            f"SELECT task_id, state, {', '.join(COLUMN_NAMES)} FROM tasks ORDER BY task_id"
        ):
            wrong = stale_columns(row)
            if wrong:
                found.append((row[0], wrong))
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

    def status_counts(self, *, tx: sqlite3.Connection | None = None) -> dict[str, int]:
        rows = self._conn(tx).execute(
            "SELECT status, count(*) FROM tasks WHERE gone IS NULL GROUP BY status"
        )
        return {status: count for status, count in rows}

    def queue_summary(self, *, tx: sqlite3.Connection | None = None) -> tuple[int, datetime | None]:
        conn = self._conn(tx)
        (depth,) = conn.execute("SELECT count(*) FROM queue").fetchone()
        head = conn.execute(
            "SELECT t.created_at FROM queue q JOIN tasks t ON t.task_id = q.task_id"
            " ORDER BY q.position LIMIT 1"
        ).fetchone()
        return depth, codec.parse_timestamp(head[0]) if head else None

    def dequeue(self, tx: sqlite3.Connection, task_id: str) -> None:
        tx.execute("DELETE FROM queue WHERE task_id = ?", (task_id,))

    def queue_entries(self, *, tx: sqlite3.Connection | None = None) -> list[tuple[str, int]]:
        rows = self._conn(tx).execute("SELECT task_id, position FROM queue ORDER BY position")
        return [(r[0], r[1]) for r in rows]

    def clear(self, tx: sqlite3.Connection) -> None:
        tx.execute("DELETE FROM tasks")
        tx.execute("DELETE FROM queue")
        tx.execute("DELETE FROM checkpoints")
        tx.execute("DELETE FROM feed")

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

    # -- the owners' feed entries -----------------------------------------------------------

    def add_to_feed(self, tx: sqlite3.Connection, entries: Sequence[FeedEntry]) -> None:
        tx.executemany(
            "INSERT INTO feed (owner, position, task_id, type) VALUES (?, ?, ?, ?)",
            [(e.owner, e.position, e.task_id, e.type) for e in entries],
        )

    def drop_from_feed(self, tx: sqlite3.Connection, task_id: str) -> None:
        tx.execute("DELETE FROM feed WHERE task_id = ?", (task_id,))

    def feed_entries(self, *, tx: sqlite3.Connection | None = None) -> Iterator[FeedEntry]:
        rows = self._conn(tx).execute(
            "SELECT position, owner, task_id, type FROM feed ORDER BY task_id, position"
        )
        for position, owner, task_id, type_ in rows:
            yield FeedEntry(position=position, owner=owner, task_id=task_id, type=type_)

    # -- the event feed ---------------------------------------------------------------------

    def feed(
        self, query: FeedQuery, *, tx: sqlite3.Connection | None = None
    ) -> list[RecordedEvent]:
        """Keyset paging: on the events' primary key for the whole log, on the ``feed`` table's
        (owner, position) for one owner. Either way a page's cost does not grow with the log,
        and an owner's with no new entry costs one index probe."""
        if query.owner is None:
            return self._log_page(query, tx)
        columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        where = ["f.owner = ?", "f.position > ?"]
        params: list[object] = [query.owner, query.after]
        if query.task_id is not None:
            where.append("f.task_id = ?")
            params.append(query.task_id)
        if query.types:
            where.append(f"f.type IN ({', '.join('?' * len(query.types))})")
            params.extend(query.types)
        if query.visible_at is not None:
            # A live task past its visible_until is hidden before the sweeper tombstones it.
            where.append(
                "NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = f.task_id"
                " AND t.gone IS NULL AND t.visible_until <= ?)"
            )
            params.append(codec.timestamp(query.visible_at))
        sql = (
            f"SELECT {columns} FROM feed f JOIN events e ON e.position = f.position"
            f" WHERE {' AND '.join(where)} ORDER BY f.position LIMIT ?"
        )
        params.append(query.limit)
        return [row_to_recorded(row) for row in self._conn(tx).execute(sql, params)]

    def _log_page(self, query: FeedQuery, tx: sqlite3.Connection | None) -> list[RecordedEvent]:
        where = ["position > ?"]
        params: list[object] = [query.after]
        if query.task_id is not None:
            where.append("stream_id = ?")
            params.append(stream_id_for(query.task_id))
        if query.types:
            where.append(f"type IN ({', '.join('?' * len(query.types))})")
            params.extend(query.types)
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
            " ORDER BY position LIMIT ?"
        )
        params.append(query.limit)
        return [row_to_recorded(row) for row in self._conn(tx).execute(sql, params)]
