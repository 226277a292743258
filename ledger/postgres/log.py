"""The PostgreSQL EventLog: events, blobs and write transactions on one database that several
server processes (nodes) share.

* **Commit order.** Every write transaction takes a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``) right after BEGIN and holds it until COMMIT. Positions are
  handed out under it (the last position plus one) and the transaction commits before the lock
  is released, so positions are gapless and commit-ordered: a reader that has seen position N
  has seen every event before N, and no event with a lower position commits later. A batch of
  the group-commit writer is one transaction, so the lock is taken once per batch, not per
  command; the same lock makes a claim's read of the queue head and its append one atomic step
  across nodes.
* ``UNIQUE (stream_id, version)`` gives optimistic concurrency as on SQLite; triggers refuse
  UPDATE, DELETE and TRUNCATE on ``events``.
* Each transaction that appended sends ``NOTIFY`` on the ledger's channel with its last
  position (delivered at commit): ``listen`` wakes other nodes' waiting readers at once (and
  leaves out the log's own, by the sending session's process id).
* Writes go through one connection per process (a lock serialises its threads); reads take a
  connection from a pool (``psycopg_pool``), in autocommit, or a REPEATABLE READ snapshot.
* **Pipeline mode and the write-behind buffer.** A write transaction runs in psycopg's
  pipeline mode: a statement whose result is not needed is sent without waiting for its
  answer, and the answers are read at the next statement whose result is needed or at COMMIT.
  What the transaction writes to the events, the projections and (small) blobs is not even
  sent at once: it is held in a buffer (``ledger.postgres.behind``) and written as one
  multi-row statement before COMMIT, or before anything reads through the transaction: a
  group-commit batch of creates writes with one statement whatever its size, and waits twice
  (its states, COMMIT). An append's version is checked by that statement (a stale one fails it,
  and the handler reruns the batch guarded, where each append is checked at once in its
  command's savepoint). An error in a statement sent ahead surfaces at that next read, so a
  savepoint writes the buffer out and syncs before it is released (the error is its
  command's), and a transaction the database rolled back is never reported as committed
  (COMMIT answering ROLLBACK raises TransactionRolledBack).
* Blobs are ``bytea`` stored uncompressed out of line (``STORAGE EXTERNAL``), so
  ``substring`` reads a piece of one without the rest.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolTimeout

from ledger import codec
from ledger.chain import GENESIS
from ledger.codec import LogEvent
from ledger.errors import ConcurrencyConflict, StorageUnavailable, TransactionRolledBack
from ledger.events import BlobRef, blob_ref
from ledger.log import Envelope, RecordedEvent, StoredEvent
from ledger.postgres.behind import SMALL_BLOB, WriteBehind
from ledger.postgres.connection import (
    channel_name,
    connect,
    create_schema,
    lock_key,
    redact,
    storage_error,
)
from ledger.rows import (
    EVENT_COLUMNS,
    STORED_COLUMNS,
    chain_events,
    row_to_recorded,
    row_to_stored,
)
from ledger.state import TaskState

#: Every event's stream and data in position order (``iter_data``: what a replay reads).
SELECT_DATA = "SELECT stream_id, data FROM events ORDER BY position"
#: Rows fetched per round trip when a whole table is walked.
WALK_BATCH = 5_000
#: The columns of an event row as inserted, and their placeholders (typed, so a column of
#: NULLs in a multi-row VALUES list still has its column's type).
INSERT_COLUMNS = (
    "position",
    "stream_id",
    "version",
    "type",
    "data",
    "recorded_at",
    "actor_key_id",
    "actor_role",
    "request_id",
    "idempotency_key",
    "hash",
)
INSERT_PLACEHOLDERS = (
    "%s::bigint",
    "%s::text",
    "%s::integer",
    "%s::text",
    "%s::text",
    "%s::text",
    "%s::text",
    "%s::text",
    "%s::text",
    "%s::text",
    "%s::text",
)


class PostgresBlobReader:
    """``ledger.log.BlobReader`` on PostgreSQL: each piece is one ``substring`` read on a pooled
    connection, so nothing is held between pieces (``release`` has nothing to let go of)."""

    def __init__(self, log: PostgresLog, ref: BlobRef, offset: int) -> None:
        self._log, self._ref, self._offset = log, ref, offset
        self._closed = False
        self._lock = threading.Lock()

    @property
    def offset(self) -> int:
        return self._offset

    def read(self, size: int) -> bytes | None:
        with self._lock:
            if self._closed:
                raise ValueError("the blob reader is closed")
            data = self._log.read_blob(self._ref, self._offset, size)
            if data is not None:
                self._offset += len(data)
            return data

    def release(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True


class PostgresLog:
    """The EventLog on a PostgreSQL database (its tables created on first use)."""

    def __init__(self, url: str, *, pool_size: int = 8, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._write_lock = threading.RLock()
        self._writer: psycopg.Connection | None = None
        #: The write session's backend process id: its NOTIFYs are this log's own commits.
        self._writer_pid: int | None = None
        self._in_tx = False
        #: Savepoints open in the write transaction: inside one, appends are checked at once.
        self._savepoints = 0
        self._turns = 0
        self._appended_to: int | None = None
        #: (last position, its hash, its recorded_at) as this transaction left them.
        self._head: tuple[int, str, str] | None = None
        self._cursors = itertools.count(1)
        #: The write transaction's pipeline while one is open.
        self._pipeline: psycopg.Pipeline | None = None
        #: Task states the open write transaction has read or prefetched, as it left them
        #: (None: no row): ``PostgresViews`` answers a later read of one without a round trip.
        self._states: dict[str, TaskState | None] = {}
        #: The projection rows and small blobs the open write transaction has written but
        #: not yet sent (``ledger.postgres.behind``).
        self._behind = WriteBehind()
        #: The blob readers not yet closed: closed with the log.
        self._blob_readers: weakref.WeakSet[PostgresBlobReader] = weakref.WeakSet()
        with self._write_lock:
            conn = self._connect_writer()
            try:
                self.schema = create_schema(conn)
            except psycopg.Error as exc:
                raise storage_error(exc) from exc
        self.lock_id = lock_key(self.schema, "append")
        self.channel = channel_name(self.schema)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            timeout=timeout,
            name="taskledger-read",
            open=True,
        )

    @property
    def name(self) -> str:
        return redact(self.url)

    # -- connections ------------------------------------------------------------------------

    def _connect_writer(self) -> psycopg.Connection:
        if self._writer is not None and not self._writer.closed and not self._writer.broken:
            return self._writer
        if self._writer is not None:
            self._writer.close()
        self._writer = connect(self.url)
        self._writer_pid = self._writer.info.backend_pid
        return self._writer

    @contextmanager
    def reading(self, tx: psycopg.Connection | None = None) -> Iterator[psycopg.Connection]:
        """``tx`` itself, or a pooled autocommit connection for the length of the block."""
        if tx is not None:
            self.flush(tx)
            yield tx
            return
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StorageUnavailable(f"The database is not answering right now ({exc})") from exc
        except psycopg.OperationalError as exc:
            raise storage_error(exc) from exc

    def check_writable(self) -> None:
        """A pooled connection answers, and the server takes writes (not a standby in
        recovery, not read-only by default): no transaction, no lock, nothing written."""
        row = self.fetchone("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
        if row is None or row[0] or row[1] == "on":
            raise StorageUnavailable(
                "The database cannot be written right now (the server is read-only)"
            )

    def fetchall(
        self, sql: str, params: Sequence[Any] = (), *, tx: psycopg.Connection | None = None
    ) -> list[tuple[Any, ...]]:
        with self.reading(tx) as conn:
            return conn.execute(sql, params).fetchall()

    def fetchone(
        self, sql: str, params: Sequence[Any] = (), *, tx: psycopg.Connection | None = None
    ) -> tuple[Any, ...] | None:
        with self.reading(tx) as conn:
            return conn.execute(sql, params).fetchone()

    def walk(
        self, sql: str, params: Sequence[Any] = (), *, tx: psycopg.Connection | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of a query that may be long, fetched ``WALK_BATCH`` at a time through a
        server-side cursor: inside ``tx`` (a transaction) or in a read-only transaction of a
        pooled connection held while the walk lasts."""
        if tx is not None:
            self.flush(tx)
            yield from self._declared(tx, sql, params)
            return
        with self.reading() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield from self._declared(conn, sql, params)
            finally:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")

    def _declared(
        self, conn: psycopg.Connection, sql: str, params: Sequence[Any]
    ) -> Iterator[tuple[Any, ...]]:
        """A cursor declared with SQL and FETCHed ``WALK_BATCH`` rows at a time, one batch
        ahead: in pipeline mode the next FETCH is sent before this batch's rows are handed
        over, so the server reads it while the caller works on these (and what the caller
        writes meanwhile on a write transaction's connection rides along). psycopg's
        server-side cursors do not work in pipeline mode; a declared one does. It lives until
        the transaction ends, or is closed once read to the end."""
        name = f"taskledger_walk_{next(self._cursors)}"
        fetch = f"FETCH FORWARD {WALK_BATCH} FROM {name}"
        with conn.pipeline():
            conn.execute(f"DECLARE {name} NO SCROLL CURSOR FOR {sql}", params)
            ahead = conn.execute(fetch)
            while True:
                rows = ahead.fetchall()
                if len(rows) == WALK_BATCH:
                    ahead = conn.execute(fetch)
                yield from rows
                if len(rows) < WALK_BATCH:
                    break
            conn.execute(f"CLOSE {name}")

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def write_turn(self) -> Iterator[None]:
        """This process's turn to write: the in-process lock, and the ledger's advisory lock
        held by the write connection's session (other nodes wait) until the turn ends.
        Transactions opened inside it take the same lock again at once (advisory locks are
        re-entrant within a session)."""
        with self._write_lock:
            self._turns += 1
            try:
                if self._turns == 1:
                    try:
                        conn = self._connect_writer()
                        conn.execute("SELECT pg_advisory_lock(%s)", (self.lock_id,))
                    except psycopg.Error as exc:
                        self._abandon()
                        raise storage_error(exc) from exc
                yield
            finally:
                self._turns -= 1
                if self._turns == 0:
                    self._unlock_turn()

    def _unlock_turn(self) -> None:
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            return  # the session, and with it its lock, is gone
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,))
        except psycopg.Error:
            conn.close()  # closing the session lets go of the lock

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """BEGIN, the ledger's advisory lock, ... , NOTIFY if events were appended, COMMIT;
        ROLLBACK on any error. A transaction opened inside another on the same thread is the
        outer one (it commits)."""
        with self._write_lock:
            if self._in_tx:
                assert self._writer is not None
                yield self._writer
                return
            try:
                conn = self._connect_writer()
            except psycopg.Error as exc:
                self._abandon()
                raise storage_error(exc) from exc
            self._in_tx, self._head, self._appended_to = True, None, None
            self._states.clear()
            self._behind.clear()
            try:
                with conn.pipeline() as pipeline:
                    self._pipeline = pipeline
                    conn.execute("BEGIN")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_id,))
                    if not self._turns:
                        # Held before the block runs: what it reads on other connections (the
                        # pool) must see no other node's write in progress. Inside a write
                        # turn the session already holds the lock (taken again at once), so
                        # BEGIN and the lock go with the block's first statement that waits.
                        pipeline.sync()
                    yield conn
                    self.flush(conn)
                    if self._appended_to is not None:
                        conn.execute(
                            "SELECT pg_notify(%s, %s)", (self.channel, str(self._appended_to))
                        )
                    commit = conn.execute("COMMIT")
                # Leaving the pipeline read every answer: COMMIT's tells whether it committed
                # (a transaction with a failed statement in it answers ROLLBACK, not an error).
                if commit.statusmessage != "COMMIT":
                    raise TransactionRolledBack(
                        "The database rolled the write transaction back (a statement in it "
                        f"failed): COMMIT answered {commit.statusmessage}"
                    )
            except psycopg.errors.PipelineAborted as exc:
                # An error surfaced earlier in the pipeline (and was caught by the caller): the
                # server skipped everything after it, COMMIT included.
                self._abandon()
                raise TransactionRolledBack(
                    "The database rolled the write transaction back (a statement in it failed)"
                ) from exc
            except psycopg.Error as exc:
                self._abandon()
                if _refused_append(exc):
                    raise ConcurrencyConflict(
                        "An append in the transaction found its stream at another version "
                        f"than it expected ({exc.diag.message_primary})"
                    ) from exc
                raise storage_error(exc) from exc
            except BaseException:
                self._abandon()
                raise
            finally:
                self._in_tx, self._head, self._appended_to = False, None, None
                self._pipeline = None
                self._states.clear()
                self._behind.clear()

    def _abandon(self) -> None:
        """Roll back whatever is open on the write connection (or drop a broken one)."""
        conn = self._writer
        if conn is None or conn.closed:
            return
        if conn.broken:
            conn.close()
            return
        try:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()

    @contextmanager
    def savepoint(self, tx: psycopg.Connection, name: str) -> Iterator[None]:
        """A nested unit inside ``tx``: on error only its own writes are undone. If the
        connection was lost, the whole transaction is: TransactionRolledBack."""
        try:
            self.flush(tx)  # what came before the unit is not undone with it
            tx.execute(f"SAVEPOINT {name}")
            self.sync()
        except psycopg.Error as exc:
            raise TransactionRolledBack(
                f"The database cannot be written right now ({exc})"
            ) from exc
        try:
            self._savepoints += 1
            try:
                yield
            finally:
                self._savepoints -= 1
            # The unit's statements sent ahead: their errors are its own, raised in here.
            self.flush(tx)
            tx.execute(f"RELEASE SAVEPOINT {name}")
            self.sync()
        except BaseException as exc:
            self._head = None
            self._states.clear()  # some may be the unit's, undone with it
            self._behind.clear()  # the unit's own rows
            try:
                # After an error the server skips what the pipeline sent until its next sync.
                self.sync()
            except psycopg.Error:
                pass  # the error being handled, or its aftermath
            try:
                tx.execute(f"ROLLBACK TO SAVEPOINT {name}")
                tx.execute(f"RELEASE SAVEPOINT {name}")
                self.sync()
            except psycopg.Error as lost:
                raise TransactionRolledBack(
                    f"The database cannot be written right now ({lost})"
                ) from exc
            if isinstance(exc, psycopg.Error):
                raise storage_error(exc) from exc
            raise

    def known_states(self, tx: object) -> dict[str, TaskState | None] | None:
        """The task states the open write transaction ``tx`` already knows (the dict to read and
        update), or None when ``tx`` is not that transaction."""
        if tx is not None and self._in_tx and tx is self._writer:
            return self._states
        return None

    def behind(self, tx: object) -> WriteBehind | None:
        """The write-behind buffer of the open write transaction ``tx``, or None when ``tx``
        is not that transaction (then a write goes to the database at once)."""
        if tx is not None and self._in_tx and tx is self._writer:
            return self._behind
        return None

    def flush(self, tx: psycopg.Connection | None = None) -> None:
        """Send what the write-behind buffer holds (in the pipeline, not waited for), if
        ``tx`` is the open write transaction: before anything reads through it."""
        if self._behind and tx is not None and self._in_tx and tx is self._writer:
            self._behind.flush(tx)

    def sync(self) -> None:
        """Send what the write transaction's pipeline holds and read every answer: an error in
        a statement sent ahead is raised here (no-op outside a write transaction)."""
        if self._pipeline is not None:
            self._pipeline.sync()

    @contextmanager
    def read_snapshot(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one REPEATABLE READ, read-only transaction."""
        with self.reading() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                if not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")

    # -- events -----------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[LogEvent],
        envelope: Envelope,
        *,
        tx: psycopg.Connection | None = None,
    ) -> list[RecordedEvent]:
        if tx is None:
            with self.transaction() as own:
                return self.append(stream_id, expected_version, events, envelope, tx=own)
        if not events:
            self._check_version(tx, stream_id, expected_version)
            return []
        behind = self.behind(tx) if not self._savepoints else None
        if behind is not None:
            # Held with the batch's other rows and written with them before COMMIT (a stale
            # version fails that statement, and the handler reruns the batch guarded: then
            # each append is checked here, in its command's savepoint).
            follows = behind.follows(stream_id)
            if follows is not None and follows != expected_version:
                raise ConcurrencyConflict(
                    f"Stream {stream_id} is at version {follows}, not {expected_version}"
                )
        else:
            self.flush(tx)
        rows, recorded, head = chain_events(
            self._head or self._chain_head(tx), stream_id, expected_version, events, envelope
        )
        if behind is not None:
            full = behind.append(stream_id, expected_version, rows)
            self._head = head
            if full:
                self.flush(tx)
        else:
            self._head = head
            self._insert(tx, rows, expected_version=expected_version)
        self._appended_to = head[0]
        return recorded

    def _chain_head(self, tx: psycopg.Connection) -> tuple[int, str, str]:
        """The newest event's position, hash and recorded_at, read under the advisory lock:
        no transaction that could append after it is in flight."""
        self.flush(tx)
        row = tx.execute(
            "SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1], row[2]) if row else (0, GENESIS, "")

    def insert_row(self, tx: psycopg.Connection, row: dict[str, object]) -> None:
        """Insert one stored event row as is (append computes it; import copies it)."""
        self._head = None
        self._insert(tx, [row])
        self._appended_to = int(row["position"])  # type: ignore[call-overload]

    def _insert(
        self,
        tx: psycopg.Connection,
        rows: list[dict[str, object]],
        *,
        expected_version: int | None = None,
    ) -> None:
        """Insert stored event rows as they are, in one statement whose answer is read at once
        (so a conflict is raised here, not at a later statement). With ``expected_version``
        the rows go in only if their stream is at that version (checked by the same
        statement), else ConcurrencyConflict."""
        if not rows:
            return
        values = ", ".join(["(" + ", ".join(INSERT_PLACEHOLDERS) + ")"] * len(rows))
        params: list[object] = [row[column] for row in rows for column in INSERT_COLUMNS]
        sql = (
            f"INSERT INTO events ({', '.join(INSERT_COLUMNS)})"
            f" SELECT * FROM (VALUES {values}) AS v ({', '.join(INSERT_COLUMNS)})"
        )
        if expected_version is not None:
            sql += " WHERE (SELECT coalesce(max(version), 0) FROM events WHERE stream_id = %s) = %s"
            params += [rows[0]["stream_id"], expected_version]
        try:
            inserted = tx.execute(sql + " RETURNING position", params).fetchall()
        except psycopg.errors.UniqueViolation as exc:
            self._head = None
            row = rows[0]
            raise ConcurrencyConflict(
                f"Stream {row['stream_id']} already has version {row['version']}"
            ) from exc
        except psycopg.Error as exc:
            self._head = None
            raise storage_error(exc) from exc
        if len(inserted) != len(rows):  # the stream was not at the expected version
            self._head = None
            stream_id = str(rows[0]["stream_id"])
            current = self.stream_version(stream_id, tx=tx)
            raise ConcurrencyConflict(
                f"Stream {stream_id} is at version {current}, not {expected_version}"
            )

    def _check_version(self, tx: psycopg.Connection, stream_id: str, expected: int | None) -> None:
        current = self.stream_version(stream_id, tx=tx)
        if current != expected:
            raise ConcurrencyConflict(f"Stream {stream_id} is at version {current}, not {expected}")

    def iter_stored(
        self, after: int = 0, *, tx: psycopg.Connection | None = None
    ) -> Iterator[StoredEvent]:
        for r in self.walk(
            f"SELECT {STORED_COLUMNS} FROM events WHERE position > %s ORDER BY position",
            (after,),
            tx=tx,
        ):
            yield row_to_stored(r)

    def iter_by_stream(
        self, *, tx: psycopg.Connection | None = None
    ) -> Iterator[tuple[str, int, str]]:
        for r in self.walk(
            "SELECT stream_id, position, data FROM events ORDER BY stream_id, version",
            tx=tx,
        ):
            yield r[0], r[1], r[2]

    def iter_data(self, *, tx: psycopg.Connection | None = None) -> Iterator[tuple[str, str]]:
        # The rows are (stream_id, data) already: handed on as they come, with no generator
        # of its own around the walk (a whole-log replay reads every event through here).
        return cast(Iterator[tuple[str, str]], self.walk(SELECT_DATA, tx=tx))

    def read_stream(
        self,
        stream_id: str,
        *,
        after: int = 0,
        until_version: int | None = None,
        limit: int | None = None,
        tx: psycopg.Connection | None = None,
    ) -> list[RecordedEvent]:
        rows = self.fetchall(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = %s AND version > %s"
            " AND version <= %s ORDER BY version LIMIT %s",
            (
                stream_id,
                after,
                until_version if until_version is not None else 2**31 - 1,
                limit,
            ),
            tx=tx,
        )
        return [row_to_recorded(row) for row in rows]

    def stream_version(self, stream_id: str, *, tx: psycopg.Connection | None = None) -> int:
        row = self.fetchone(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = %s",
            (stream_id,),
            tx=tx,
        )
        return row[0] if row else 0

    def version_at(
        self, stream_id: str, when: datetime, *, tx: psycopg.Connection | None = None
    ) -> int:
        """A binary search over the stream's versions, each probe one index seek (recorded_at
        never goes backwards along the log, so the events recorded by ``when`` are a prefix)."""
        with self.reading(tx) as conn:
            stamp = codec.timestamp(when)
            low, high = 0, self.stream_version(stream_id, tx=conn)
            while low < high:
                middle = (low + high + 1) // 2
                row = conn.execute(
                    "SELECT recorded_at FROM events WHERE stream_id = %s AND version = %s",
                    (stream_id, middle),
                ).fetchone()
                if row is not None and row[0] <= stamp:
                    low = middle
                else:
                    high = middle - 1
            return low

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        rows = self.fetchall(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s",
            (after, limit),
        )
        return [row_to_recorded(row) for row in rows]

    def iter_all(self, after: int = 0, batch: int = 10_000) -> Iterator[RecordedEvent]:
        while True:
            page = self.read_all(after, batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].position

    def last_position(self) -> int:
        row = self.fetchone("SELECT coalesce(max(position), 0) FROM events")
        return row[0] if row else 0

    # -- blobs ------------------------------------------------------------------------------

    def put_blob(self, task_id: str, data: bytes, *, tx: psycopg.Connection) -> BlobRef:
        ref = blob_ref(data)
        behind = self.behind(tx)
        if behind is not None and len(data) <= SMALL_BLOB:
            if behind.put_blob(task_id, ref.sha256, data):
                self.flush(tx)
            return ref
        try:
            # One statement for both rows (in a write transaction's pipeline, no round trip).
            tx.execute(
                "WITH stored AS (INSERT INTO blobs (sha256, size, data) VALUES (%s, %s, %s)"
                " ON CONFLICT (sha256) DO NOTHING)"
                " INSERT INTO blob_refs (task_id, sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (ref.sha256, ref.size, data, task_id, ref.sha256),
            )
        except psycopg.Error as exc:
            raise storage_error(exc) from exc
        return ref

    def get_blob(self, ref: BlobRef, *, tx: psycopg.Connection | None = None) -> bytes | None:
        row = self.fetchone("SELECT data FROM blobs WHERE sha256 = %s", (ref.sha256,), tx=tx)
        return bytes(row[0]) if row else None

    def read_blob(
        self, ref: BlobRef, offset: int, size: int, *, tx: psycopg.Connection | None = None
    ) -> bytes | None:
        """``substring`` of an uncompressed out-of-line value reads only the TOAST chunks that
        hold the piece."""
        row = self.fetchone(
            "SELECT substring(data FROM %s FOR %s) FROM blobs WHERE sha256 = %s",
            (offset + 1, size, ref.sha256),
            tx=tx,
        )
        return bytes(row[0]) if row else None

    def open_blob(self, ref: BlobRef, offset: int = 0) -> PostgresBlobReader:
        reader = PostgresBlobReader(self, ref, offset)
        self._blob_readers.add(reader)
        return reader

    def purge_blobs(self, task_id: str, *, tx: psycopg.Connection) -> int:
        self.flush(tx)
        shas = [
            r[0]
            for r in tx.execute(
                "DELETE FROM blob_refs WHERE task_id = %s RETURNING sha256", (task_id,)
            ).fetchall()
        ]
        if not shas:
            return 0
        deleted = tx.execute(
            "DELETE FROM blobs b WHERE b.sha256 = ANY(%s) AND NOT EXISTS"
            " (SELECT 1 FROM blob_refs r WHERE r.sha256 = b.sha256) RETURNING 1",
            (shas,),
        ).fetchall()
        return len(deleted)

    def iter_blobs(
        self, *, tx: psycopg.Connection | None = None
    ) -> Iterator[tuple[str, bytes, list[str]]]:
        for sha, data, owners in self.walk(
            "SELECT b.sha256, b.data, coalesce(array_agg(r.task_id ORDER BY r.task_id)"
            " FILTER (WHERE r.task_id IS NOT NULL), '{}')"
            " FROM blobs b LEFT JOIN blob_refs r ON r.sha256 = b.sha256"
            " GROUP BY b.sha256, b.data ORDER BY b.sha256",
            tx=tx,
        ):
            yield sha, bytes(data), list(owners)

    # -- other nodes' appends ---------------------------------------------------------------

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on a thread of its own) soon after another log on this ledger
        (another process, another node) commits events; returns a function that stops
        listening. This log's own commits are left out: whoever wrote them knows (the service's
        writer wakes its readers itself), and a call for them would race that writer's report
        and pass them off as someone else's."""
        listener = _Listener(self.url, self.channel, callback, self._is_own)
        listener.start()
        return listener.stop

    def _is_own(self, pid: int) -> bool:
        """Whether a notification from backend process ``pid`` is this log's write session's
        (one sent before the session was replaced counts as another's: a needless look)."""
        return pid == self._writer_pid

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        for reader in list(self._blob_readers):
            reader.close()
        self._pool.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def _refused_append(exc: psycopg.Error) -> bool:
    """Whether ``exc`` is a held append refused when written out: a version taken already
    (the unique index) or a stream not at the version expected (a NULL version)."""
    return (
        isinstance(exc, psycopg.errors.UniqueViolation | psycopg.errors.NotNullViolation)
        and exc.diag.table_name == "events"
    )


class _Listener:
    """A thread with a connection of its own that LISTENs on the channel and calls back for
    each notification not sent by a session ``own(pid)`` names; reconnects (after a pause)
    when the connection is lost, and calls back once after each reconnect, since notifications
    sent meanwhile were lost."""

    RETRY_SECONDS = 1.0
    #: The wait for notifications is cut into pieces this long, to see ``stop``: what closing a
    #: log (a service's shutdown) waits for the thread at most. No query runs between pieces.
    STOP_SECONDS = 0.1

    def __init__(
        self,
        url: str,
        channel: str,
        callback: Callable[[], None],
        own: Callable[[int], bool] = lambda pid: False,
    ) -> None:
        self._url, self._channel, self._callback, self._own = url, channel, callback, own
        self._stopping = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="taskledger-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                conn = self._conn = psycopg.connect(self._url, autocommit=True)
                conn.execute(f'LISTEN "{self._channel}"')
                if not first:
                    self._callback()
                first = False
                while not self._stopping.is_set():
                    for notify in conn.notifies(timeout=self.STOP_SECONDS, stop_after=1):
                        if not self._own(notify.pid):
                            self._callback()
            except psycopg.Error:
                if self._stopping.wait(self.RETRY_SECONDS):
                    return
            finally:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
