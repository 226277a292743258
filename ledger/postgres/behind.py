"""The write transaction's write-behind buffer: the event rows, the projection rows
(``tasks``, ``queue``, ``feed``, ``checkpoints``) and the small blobs with their references
that a group-commit batch writes, kept in memory and written as one statement of multi-row
``unnest`` inserts just before COMMIT, instead of one statement per command per table.

Each statement costs the writer about 50-60 us of psycopg's CPU whatever it carries, and a
create sent five (one of them, its append, waited for); with the buffer a batch of creates
sends one. Its arrays go in binary: psycopg's text format escapes each element in Python
(3.6 ms for three arrays of 32 states, against 24 us in binary).

* **Reads see the buffer.** ``PostgresLog`` writes it out before any read through the write
  transaction (a fetch, a walk, the chain head, a blob read back), so what a later command of
  the batch reads includes what an earlier one wrote. The task states a transaction wrote are
  also kept in its states cache (``PostgresLog.known_states``), so a command's read of its own
  task costs nothing, and a batch's claims take their heads from one read of the stored queue's
  front and the queue changes held here (``queue_head``).
* **Appends.** An append's first row carries the version its stream must be at (unless the
  stream's last version is held here: then the log checks it in memory); a stale one gets a
  NULL version, which NOT NULL refuses, so the statement fails as a taken version does at the
  unique index. Inside a savepoint the log checks appends at once instead.
* **Savepoints.** It is written out before a savepoint begins and before it is released, and
  dropped when one is rolled back: what it holds then is that unit's own rows.
* **One row per key.** Rows are kept by their primary key, the last write winning (a multi-row
  upsert may not touch one row twice); a task's feed entries dropped (its tombstone) also drop
  its entries still in the buffer, and the delete runs before the inserts, so the entries added
  after the drop stay.
* **Errors.** The statement goes ahead in the pipeline like the writes it replaces; a failure
  surfaces at the next read or at COMMIT, and the handler reruns the batch guarded (a savepoint
  per command), where each command's rows are written, and fail, inside its own savepoint.
"""

from __future__ import annotations

import psycopg

#: A blob larger than this is written at once (in the pipeline), not held until COMMIT.
SMALL_BLOB = 256 * 1024
#: Rows held before the buffer is written out anyway (a rebuild writes every row of every
#: projection in one transaction).
MAX_ROWS = 2_000
#: Blob bytes held before the buffer is written out anyway.
MAX_BLOB_BYTES = 4 * 1024 * 1024

#: One statement for every table, each part a no-op when its arrays are empty: data-modifying
#: CTEs always run, and the keys they touch are disjoint (one row per key; the feed's delete
#: sees the table as the statement began, so not the entries it inserts).
FLUSH_SQL = """
WITH
events_in AS (
    INSERT INTO events (position, stream_id, version, type, data, recorded_at, actor_key_id,
                        actor_role, request_id, idempotency_key, hash)
    SELECT v.position, v.stream_id,
           -- An append goes in only if its stream is at the version it expects: else a NULL
           -- version, which NOT NULL refuses (the whole statement fails).
           CASE WHEN v.expected IS NULL OR v.expected = (
                    SELECT coalesce(max(e.version), 0) FROM events e
                    WHERE e.stream_id = v.stream_id)
                THEN v.version END,
           v.type, v.data, v.recorded_at, v.actor_key_id, v.actor_role, v.request_id,
           v.idempotency_key, v.hash
    FROM unnest(%(e_position)b::bigint[], %(e_stream)b::text[], %(e_version)b::integer[],
                %(e_expected)b::integer[], %(e_type)b::text[], %(e_data)b::text[],
                %(e_recorded_at)b::text[], %(e_key_id)b::text[], %(e_role)b::text[],
                %(e_request_id)b::text[], %(e_idempotency_key)b::text[], %(e_hash)b::text[])
        AS v (position, stream_id, version, expected, type, data, recorded_at, actor_key_id,
              actor_role, request_id, idempotency_key, hash)
),
blobs_in AS (
    INSERT INTO blobs (sha256, size, data)
    SELECT * FROM unnest(%(blob_sha)b::text[], %(blob_size)b::bigint[], %(blob_data)b::bytea[])
    ON CONFLICT (sha256) DO NOTHING
),
refs_in AS (
    INSERT INTO blob_refs (task_id, sha256)
    SELECT * FROM unnest(%(ref_task)b::text[], %(ref_sha)b::text[])
    ON CONFLICT DO NOTHING
),
tasks_in AS (
    INSERT INTO tasks (task_id, owner, status, created_at, visible_until, lease_until, gone,
                       version, state)
    SELECT * FROM unnest(%(t_id)b::text[], %(t_owner)b::text[], %(t_status)b::text[],
                         %(t_created)b::text[], %(t_visible)b::text[], %(t_lease)b::text[],
                         %(t_gone)b::text[], %(t_version)b::integer[], %(t_state)b::text[])
    ON CONFLICT (task_id) DO UPDATE SET owner = excluded.owner, status = excluded.status,
        created_at = excluded.created_at, visible_until = excluded.visible_until,
        lease_until = excluded.lease_until, gone = excluded.gone, version = excluded.version,
        state = excluded.state
),
queue_out AS (
    DELETE FROM queue WHERE task_id = ANY(%(q_out)b::text[])
),
queue_in AS (
    INSERT INTO queue (task_id, position)
    SELECT * FROM unnest(%(q_id)b::text[], %(q_position)b::bigint[])
    ON CONFLICT (task_id) DO UPDATE SET position = excluded.position
),
feed_out AS (
    DELETE FROM feed WHERE task_id = ANY(%(f_out)b::text[])
),
feed_in AS (
    INSERT INTO feed (owner, position, task_id, type)
    SELECT * FROM unnest(%(f_owner)b::text[], %(f_position)b::bigint[], %(f_task)b::text[],
                         %(f_type)b::text[])
)
INSERT INTO checkpoints (task_id, version, state)
SELECT * FROM unnest(%(c_id)b::text[], %(c_version)b::integer[], %(c_state)b::text[])
ON CONFLICT (task_id, version) DO UPDATE SET state = excluded.state
"""


class WriteBehind:
    """The rows a write transaction has written but not yet sent (see the module)."""

    def __init__(self) -> None:
        #: The event rows appended (``ledger.rows.chain_events``), each with the version its
        #: stream must be at for it to go in (None: no check, the row follows one held here).
        self.events: list[tuple[dict[str, object], int | None]] = []
        #: stream id -> the last version of it held here.
        self.streams: dict[str, int] = {}
        #: task id -> (owner, status, created_at, visible_until, lease_until, gone, version,
        #: state)
        self.tasks: dict[str, tuple[object, ...]] = {}
        #: task id -> its queue position, or None: out of the queue.
        self.queue: dict[str, int | None] = {}
        #: Tasks whose stored feed entries are to go (before the entries below go in).
        self.feed_out: dict[str, None] = {}
        #: (owner, position, task id, type)
        self.feed: list[tuple[str, int, str, str]] = []
        #: (task id, version) -> state
        self.checkpoints: dict[tuple[str, int], str] = {}
        #: sha256 -> (size, data)
        self.blobs: dict[str, tuple[int, bytes]] = {}
        self.refs: dict[tuple[str, str], None] = {}
        #: The front of the stored queue as read (task id -> its stored state), in position
        #: order, while nothing held here has been written out since: what the claims of a
        #: batch take their heads from (``queue_head``). None: not read.
        self.queue_front: dict[str, str | None] | None = None
        #: Whether ``queue_front`` is the whole stored queue.
        self.queue_front_whole = False
        self._held = 0
        self._blob_bytes = 0

    def __bool__(self) -> bool:
        return self._held > 0

    def clear(self) -> None:
        self.events.clear()
        self.streams.clear()
        self.tasks.clear()
        self.queue.clear()
        self.feed_out.clear()
        self.feed.clear()
        self.checkpoints.clear()
        self.blobs.clear()
        self.refs.clear()
        self.queue_front, self.queue_front_whole = None, False
        self._held = 0
        self._blob_bytes = 0

    # -- what the views and the log hand it; each says whether the buffer is full ----------

    def follows(self, stream_id: str) -> int | None:
        """The stream's last version held here (None if none is): an append to it must
        expect that version."""
        return self.streams.get(stream_id)

    def append(self, stream_id: str, expected_version: int, rows: list[dict[str, object]]) -> bool:
        """Hold an append's event rows; the first is checked against the stored stream when
        written out, unless the stream's last version is held here already (then the caller
        has checked ``follows``)."""
        check: int | None = None if stream_id in self.streams else expected_version
        for n, row in enumerate(rows):
            self.events.append((row, check if n == 0 else None))
        self.streams[stream_id] = int(rows[-1]["version"])  # type: ignore[call-overload]
        return self._add(len(rows))

    def save_task(self, task_id: str, row: tuple[object, ...]) -> bool:
        self.tasks[task_id] = row
        return self._add(1)

    def enqueue(self, task_id: str, position: int) -> bool:
        self.queue[task_id] = position
        return self._add(1)

    def dequeue(self, task_id: str) -> bool:
        self.queue[task_id] = None
        return self._add(1)

    def add_to_feed(self, entries: list[tuple[str, int, str, str]]) -> bool:
        self.feed.extend(entries)
        return self._add(len(entries))

    def drop_from_feed(self, task_id: str) -> bool:
        if any(entry[2] == task_id for entry in self.feed):
            self.feed = [entry for entry in self.feed if entry[2] != task_id]
        self.feed_out[task_id] = None
        return self._add(1)

    def queue_head(self) -> str | None:
        """The head of the queue, from ``queue_front`` and the queue changes held here: the
        first stored entry no change here has taken out or moved, else (when the front read is
        the whole stored queue) the held entry with the lowest position, which is above every
        stored one (its event was appended after the front was read). None: none found (read
        more of the front, unless it is whole)."""
        assert self.queue_front is not None
        for task_id in self.queue_front:
            if task_id not in self.queue:
                return task_id
        if not self.queue_front_whole:
            return None
        held = [(p, task_id) for task_id, p in self.queue.items() if p is not None]
        return min(held)[1] if held else None

    def save_checkpoint(self, task_id: str, version: int, state: str) -> bool:
        self.checkpoints[(task_id, version)] = state
        return self._add(1)

    def put_blob(self, task_id: str, sha256: str, data: bytes) -> bool:
        if sha256 not in self.blobs:
            self.blobs[sha256] = (len(data), data)
            self._blob_bytes += len(data)
        self.refs[(task_id, sha256)] = None
        return self._add(1) or self._blob_bytes >= MAX_BLOB_BYTES

    def _add(self, rows: int) -> bool:
        self._held += rows
        return self._held >= MAX_ROWS

    # -- written out ------------------------------------------------------------------------

    def flush(self, conn: psycopg.Connection) -> None:
        """Send every row held as one statement (in the pipeline: its answer is not waited
        for) and empty the buffer."""
        if not self._held:
            return
        tasks = list(self.tasks.items())
        queued = [(t, p) for t, p in self.queue.items() if p is not None]
        events = [row for row, _ in self.events]
        params = {
            "e_position": [row["position"] for row in events],
            "e_stream": [row["stream_id"] for row in events],
            "e_version": [row["version"] for row in events],
            "e_expected": [expected for _, expected in self.events],
            "e_type": [row["type"] for row in events],
            "e_data": [row["data"] for row in events],
            "e_recorded_at": [row["recorded_at"] for row in events],
            "e_key_id": [row["actor_key_id"] for row in events],
            "e_role": [row["actor_role"] for row in events],
            "e_request_id": [row["request_id"] for row in events],
            "e_idempotency_key": [row["idempotency_key"] for row in events],
            "e_hash": [row["hash"] for row in events],
            "blob_sha": list(self.blobs),
            "blob_size": [size for size, _ in self.blobs.values()],
            "blob_data": [data for _, data in self.blobs.values()],
            "ref_task": [task_id for task_id, _ in self.refs],
            "ref_sha": [sha for _, sha in self.refs],
            "t_id": [task_id for task_id, _ in tasks],
            **{
                name: [row[n] for _, row in tasks]
                for n, name in enumerate(
                    (
                        "t_owner",
                        "t_status",
                        "t_created",
                        "t_visible",
                        "t_lease",
                        "t_gone",
                        "t_version",
                        "t_state",
                    )
                )
            },
            "q_out": [t for t, p in self.queue.items() if p is None],
            "q_id": [t for t, _ in queued],
            "q_position": [p for _, p in queued],
            "f_out": list(self.feed_out),
            "f_owner": [e[0] for e in self.feed],
            "f_position": [e[1] for e in self.feed],
            "f_task": [e[2] for e in self.feed],
            "f_type": [e[3] for e in self.feed],
            "c_id": [task_id for task_id, _ in self.checkpoints],
            "c_version": [version for _, version in self.checkpoints],
            "c_state": list(self.checkpoints.values()),
        }
        self.clear()
        conn.execute(FLUSH_SQL, params)
