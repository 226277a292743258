"""The global event feed: events in position order after a cursor, optionally only one owner's
tasks, some event types, or one task. Keyset paging on the primary key: the cost of a page does
not grow with the log."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ledger.log import RecordedEvent, stream_id_for
from ledger.sqlite_log import EVENT_COLUMNS, row_to_recorded


def page(
    conn: sqlite3.Connection,
    *,
    after: int,
    limit: int,
    owner: str | None = None,
    types: Sequence[str] = (),
    task_id: str | None = None,
) -> list[RecordedEvent]:
    columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
    where = ["e.position > ?"]
    params: list[object] = [after]
    if task_id is not None:
        where.append("e.stream_id = ?")
        params.append(stream_id_for(task_id))
    if types:
        where.append(f"e.type IN ({', '.join('?' * len(types))})")
        params.extend(types)
    join = ""
    if owner is not None:
        join = "JOIN tasks t ON t.task_id = substr(e.stream_id, 6)"
        where.append("t.owner = ?")
        params.append(owner)
    sql = (
        f"SELECT {columns} FROM events e {join} WHERE {' AND '.join(where)}"
        " ORDER BY e.position LIMIT ?"
    )
    params.append(limit)
    return [row_to_recorded(row) for row in conn.execute(sql, params)]
