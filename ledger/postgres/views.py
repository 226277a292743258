"""The read models' tables on PostgreSQL: ``tasks``, ``queue``, ``checkpoints``, ``feed`` and
the event feed query, the same tables and columns as on SQLite (``ledger.sqlite.views``).
Which tasks a query may show is decided by the domain: ``visible_until`` is
``decider.visible_until(state)`` and the queries only compare it with the time they are given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

import psycopg

from ledger import codec
from ledger.log import FeedEntry, FeedQuery, RecordedEvent, TaskQuery, stream_id_for
from ledger.postgres.log import PostgresLog
from ledger.rows import COLUMN_NAMES, EVENT_COLUMNS, query_columns, row_to_recorded, stale_columns
from ledger.state import TaskState

#: Rows of the stored queue's front a write transaction reads for its claims at once.
QUEUE_FRONT = 64


class PostgresViews:
    """``ledger.log.TaskViews`` on the database of a ``PostgresLog``."""

    def __init__(self, log: PostgresLog) -> None:
        self._log = log

    # -- tasks ------------------------------------------------------------------------------

    def load_task(self, task_id: str, *, tx: psycopg.Connection | None = None) -> TaskState | None:
        known = self._log.known_states(tx)
        if known is not None and task_id in known:
            return known[task_id]
        row = self._log.fetchone("SELECT state FROM tasks WHERE task_id = %s", (task_id,), tx=tx)
        state = codec.decode_state(row[0]) if row else None
        if known is not None:
            known[task_id] = state
        return state

    def prefetch_tasks(self, tx: psycopg.Connection, task_ids: Sequence[str]) -> None:
        """Read the states of a write transaction's coming commands in one round trip; each
        later ``load_task`` of one of them in this transaction is answered from memory (and
        ``save_task`` keeps the answer current)."""
        known = self._log.known_states(tx)
        if known is None:
            return
        wanted = [task_id for task_id in dict.fromkeys(task_ids) if task_id not in known]
        if not wanted:
            return
        self._log.flush(tx)
        rows = tx.execute(
            "SELECT task_id, state FROM tasks WHERE task_id = ANY(%s)", (wanted,)
        ).fetchall()
        found = {task_id: codec.decode_state(state) for task_id, state in rows}
        for task_id in wanted:
            known[task_id] = found.get(task_id)

    def save_task(self, tx: psycopg.Connection, state: TaskState) -> None:
        behind = self._log.behind(tx)
        if behind is not None:
            # Held until COMMIT (or the next read through tx); meanwhile this transaction's
            # reads of the task are answered from its states cache.
            known = self._log.known_states(tx)
            assert known is not None
            known[state.task_id] = state
            row = (*query_columns(state), codec.encode_str(state))
            if behind.save_task(state.task_id, row):
                self._log.flush(tx)
            return
        tx.execute(
            "INSERT INTO tasks (task_id, owner, status, created_at, visible_until, lease_until,"
            " gone, version, state) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (task_id) DO UPDATE SET owner = excluded.owner,"
            " status = excluded.status, created_at = excluded.created_at,"
            " visible_until = excluded.visible_until, lease_until = excluded.lease_until,"
            " gone = excluded.gone, version = excluded.version, state = excluded.state",
            (state.task_id, *query_columns(state), codec.encode_str(state)),
        )

    def list_tasks(
        self, query: TaskQuery, *, tx: psycopg.Connection | None = None
    ) -> list[TaskState]:
        where = ["gone IS NULL", "(visible_until IS NULL OR visible_until > %s)"]
        params: list[object] = [codec.timestamp(query.at)]
        if query.owner is not None:
            where.append("owner = %s")
            params.append(query.owner)
        if query.start is not None:
            where.append("created_at >= %s")
            params.append(codec.timestamp(query.start))
        if query.end is not None:
            where.append("created_at <= %s")
            params.append(codec.timestamp(query.end))
        sql = (
            f"SELECT state FROM tasks WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, task_id DESC LIMIT %s OFFSET %s"
        )
        params += [query.limit, query.offset]
        return [codec.decode_state(row[0]) for row in self._log.fetchall(sql, params, tx=tx)]

    def stored_states(
        self, *, tx: psycopg.Connection | None = None
    ) -> Iterator[tuple[str, TaskState]]:
        for task_id, state in self._log.walk(
            "SELECT task_id, state FROM tasks ORDER BY task_id", tx=tx
        ):
            yield task_id, codec.decode_state(state)

    def stale_rows(self, *, tx: psycopg.Connection | None = None) -> list[tuple[str, str]]:
        found = []
        for row in self._log.walk(
            f"SELECT task_id, state, {', '.join(COLUMN_NAMES)} FROM tasks ORDER BY task_id", tx=tx
        ):
            wrong = stale_columns(row)
            if wrong:
                found.append((row[0], wrong))
        return found

    def due_leases(self, at: datetime, limit: int = 500) -> list[str]:
        rows = self._log.fetchall(
            "SELECT task_id FROM tasks WHERE gone IS NULL AND lease_until IS NOT NULL"
            " AND lease_until <= %s ORDER BY lease_until LIMIT %s",
            (codec.timestamp(at), limit),
        )
        return [row[0] for row in rows]

    def due_expiries(self, at: datetime, limit: int = 500) -> list[str]:
        rows = self._log.fetchall(
            "SELECT task_id FROM tasks WHERE gone IS NULL AND visible_until IS NOT NULL"
            " AND visible_until <= %s ORDER BY visible_until LIMIT %s",
            (codec.timestamp(at), limit),
        )
        return [row[0] for row in rows]

    # -- queue ------------------------------------------------------------------------------

    def status_counts(self, *, tx: psycopg.Connection | None = None) -> dict[str, int]:
        rows = self._log.fetchall(
            "SELECT status, count(*) FROM tasks WHERE gone IS NULL GROUP BY status", tx=tx
        )
        return {status: count for status, count in rows}

    def queue_summary(self, *, tx: psycopg.Connection | None = None) -> tuple[int, datetime | None]:
        row = self._log.fetchone(
            "SELECT (SELECT count(*) FROM queue), (SELECT t.created_at FROM queue q"
            " JOIN tasks t ON t.task_id = q.task_id ORDER BY q.position LIMIT 1)",
            tx=tx,
        )
        assert row is not None
        return row[0], codec.parse_timestamp(row[1]) if row[1] is not None else None

    def queue_head(self, *, tx: psycopg.Connection | None = None) -> str | None:
        """The oldest claimable task. Inside a write transaction the ledger's advisory lock is
        held, so no other node can claim the same head before this transaction commits."""
        known = self._log.known_states(tx)
        if known is None:
            row = self._log.fetchone("SELECT task_id FROM queue ORDER BY position LIMIT 1", tx=tx)
            return row[0] if row else None
        behind = self._log.behind(tx)
        assert behind is not None
        while True:
            if behind.queue_front is None:
                # The front of the stored queue, with each task's state (the claim that asked
                # loads it next), read once for the claims of the batch: one round trip. The
                # read writes the buffer out first, so the rows are the queue as it stands.
                rows = self._log.fetchall(
                    "SELECT q.task_id, t.state FROM queue q"
                    " LEFT JOIN tasks t ON t.task_id = q.task_id"
                    " ORDER BY q.position LIMIT %s",
                    (QUEUE_FRONT,),
                    tx=tx,
                )
                behind.queue_front = {task_id: state for task_id, state in rows}
                behind.queue_front_whole = len(rows) < QUEUE_FRONT
            head = behind.queue_head()
            if head is not None or behind.queue_front_whole:
                break
            behind.queue_front = None  # every row read has left or moved: read on
        if head is not None and head not in known:
            state = behind.queue_front.get(head) if behind.queue_front else None
            known[head] = codec.decode_state(state) if state is not None else None
        return head

    def enqueue(self, tx: psycopg.Connection, task_id: str, position: int) -> None:
        behind = self._log.behind(tx)
        if behind is not None:
            if behind.enqueue(task_id, position):
                self._log.flush(tx)
            return
        tx.execute(
            "INSERT INTO queue (task_id, position) VALUES (%s, %s)"
            " ON CONFLICT (task_id) DO UPDATE SET position = excluded.position",
            (task_id, position),
        )

    def dequeue(self, tx: psycopg.Connection, task_id: str) -> None:
        behind = self._log.behind(tx)
        if behind is not None:
            if behind.dequeue(task_id):
                self._log.flush(tx)
            return
        tx.execute("DELETE FROM queue WHERE task_id = %s", (task_id,))

    def queue_entries(self, *, tx: psycopg.Connection | None = None) -> list[tuple[str, int]]:
        rows = self._log.fetchall("SELECT task_id, position FROM queue ORDER BY position", tx=tx)
        return [(r[0], r[1]) for r in rows]

    def clear(self, tx: psycopg.Connection) -> None:
        known = self._log.known_states(tx)
        if known is not None:
            known.clear()
        self._log.flush(tx)
        tx.execute("DELETE FROM tasks")
        tx.execute("DELETE FROM queue")
        tx.execute("DELETE FROM checkpoints")
        tx.execute("DELETE FROM feed")

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, tx: psycopg.Connection, state: TaskState) -> None:
        behind = self._log.behind(tx)
        if behind is not None:
            if behind.save_checkpoint(state.task_id, state.version, codec.encode_str(state)):
                self._log.flush(tx)
            return
        tx.execute(
            "INSERT INTO checkpoints (task_id, version, state) VALUES (%s, %s, %s)"
            " ON CONFLICT (task_id, version) DO UPDATE SET state = excluded.state",
            (state.task_id, state.version, codec.encode_str(state)),
        )

    def load_checkpoint(
        self, task_id: str, version: int, *, tx: psycopg.Connection | None = None
    ) -> TaskState | None:
        row = self._log.fetchone(
            "SELECT state FROM checkpoints WHERE task_id = %s AND version <= %s"
            " ORDER BY version DESC LIMIT 1",
            (task_id, version),
            tx=tx,
        )
        return codec.decode_state(row[0]) if row else None

    def stored_checkpoints(
        self, *, tx: psycopg.Connection | None = None
    ) -> Iterator[tuple[str, int, TaskState]]:
        for task_id, version, state in self._log.walk(
            "SELECT task_id, version, state FROM checkpoints ORDER BY task_id, version", tx=tx
        ):
            yield task_id, version, codec.decode_state(state)

    # -- the owners' feed entries -----------------------------------------------------------

    def add_to_feed(self, tx: psycopg.Connection, entries: Sequence[FeedEntry]) -> None:
        if not entries:
            return
        behind = self._log.behind(tx)
        if behind is not None:
            if behind.add_to_feed([(e.owner, e.position, e.task_id, e.type) for e in entries]):
                self._log.flush(tx)
            return
        with tx.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO feed (owner, position, task_id, type) VALUES (%s, %s, %s, %s)",
                [(e.owner, e.position, e.task_id, e.type) for e in entries],
            )

    def drop_from_feed(self, tx: psycopg.Connection, task_id: str) -> None:
        behind = self._log.behind(tx)
        if behind is not None:
            if behind.drop_from_feed(task_id):
                self._log.flush(tx)
            return
        tx.execute("DELETE FROM feed WHERE task_id = %s", (task_id,))

    def feed_entries(self, *, tx: psycopg.Connection | None = None) -> Iterator[FeedEntry]:
        for position, owner, task_id, type_ in self._log.walk(
            "SELECT position, owner, task_id, type FROM feed ORDER BY task_id, position", tx=tx
        ):
            yield FeedEntry(position=position, owner=owner, task_id=task_id, type=type_)

    # -- the event feed ---------------------------------------------------------------------

    def feed(
        self, query: FeedQuery, *, tx: psycopg.Connection | None = None
    ) -> list[RecordedEvent]:
        """Keyset paging, as on SQLite: the events' primary key for the whole log, the feed
        table's (owner, position) for one owner."""
        if query.owner is None:
            return self._log_page(query, tx)
        columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        where = ["f.owner = %s", "f.position > %s"]
        params: list[object] = [query.owner, query.after]
        if query.task_id is not None:
            where.append("f.task_id = %s")
            params.append(query.task_id)
        if query.types:
            where.append("f.type = ANY(%s)")
            params.append(list(query.types))
        if query.visible_at is not None:
            where.append(
                "NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = f.task_id"
                " AND t.gone IS NULL AND t.visible_until <= %s)"
            )
            params.append(codec.timestamp(query.visible_at))
        sql = (
            f"SELECT {columns} FROM feed f JOIN events e ON e.position = f.position"
            f" WHERE {' AND '.join(where)} ORDER BY f.position LIMIT %s"
        )
        params.append(query.limit)
        return [row_to_recorded(row) for row in self._log.fetchall(sql, params, tx=tx)]

    def _log_page(self, query: FeedQuery, tx: psycopg.Connection | None) -> list[RecordedEvent]:
        where = ["position > %s"]
        params: list[object] = [query.after]
        if query.task_id is not None:
            where.append("stream_id = %s")
            params.append(stream_id_for(query.task_id))
        if query.types:
            where.append("type = ANY(%s)")
            params.append(list(query.types))
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
            " ORDER BY position LIMIT %s"
        )
        params.append(query.limit)
        return [row_to_recorded(row) for row in self._log.fetchall(sql, params, tx=tx)]
