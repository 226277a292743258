"""The ``queue`` projection: claimable (Starting) tasks in FIFO order.

A task enters the queue at the position of the event that made it claimable (created, update
requested, lease expired or released) and leaves it when it is claimed, cancelled, deleted or
expired. The head of the queue is the row with the lowest position.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ledger.events import STARTING
from ledger.log import RecordedEvent
from ledger.state import TaskState

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    task_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_fifo ON queue (position);
"""


def claimable(state: TaskState) -> bool:
    return state.live and state.status == STARTING


def queue_position(
    before: TaskState, after: TaskState, position: int, current: int | None
) -> int | None:
    """Where the task stands in the queue after an event at ``position``: it joins at the
    position of the event that made it claimable, keeps its place while it stays claimable, and
    leaves when it stops being claimable."""
    if not claimable(after):
        return None
    return current if claimable(before) and current is not None else position


class QueueProjection:
    schema = SCHEMA

    def apply(
        self,
        tx: sqlite3.Connection,
        before: TaskState,
        after: TaskState,
        recorded: Sequence[RecordedEvent],
    ) -> None:
        # A task has a queue row exactly when it is claimable (``verify`` checks it), so
        # ``before`` says whether there is a row without reading it.
        was, now = claimable(before), claimable(after)
        if was and not now:
            tx.execute("DELETE FROM queue WHERE task_id = ?", (after.task_id,))
        elif now and not was:
            tx.execute(
                "INSERT OR REPLACE INTO queue (task_id, position) VALUES (?, ?)",
                (after.task_id, recorded[-1].position),
            )

    def head(self, conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT task_id FROM queue ORDER BY position LIMIT 1").fetchone()
        return row[0] if row else None

    def entries(self, conn: sqlite3.Connection) -> list[tuple[str, int]]:
        rows = conn.execute("SELECT task_id, position FROM queue ORDER BY position")
        return [(r[0], r[1]) for r in rows]

    def put(self, tx: sqlite3.Connection, task_id: str, position: int) -> None:
        tx.execute(
            "INSERT OR REPLACE INTO queue (task_id, position) VALUES (?, ?)", (task_id, position)
        )

    def clear(self, tx: sqlite3.Connection) -> None:
        tx.execute("DELETE FROM queue")
