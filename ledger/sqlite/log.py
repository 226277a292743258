"""The SQLite EventLog: WAL, ``synchronous=FULL`` by default, append-only by trigger.

* ``events.position`` is ``INTEGER PRIMARY KEY AUTOINCREMENT``: a position is never reused, even
  after the newest event's row is gone (it never is: triggers forbid UPDATE and DELETE).
* ``UNIQUE(stream_id, version)`` gives optimistic concurrency; the driver's IntegrityError becomes
  ConcurrencyConflict here and nowhere else.
* Writes go through one connection per process, serialised by a lock, inside ``BEGIN IMMEDIATE``;
  several processes on one file take turns through ``ledger.sqlite.lock``'s ``flock`` before
  they begin. SQLite's own lock still guards against writers that don't take the side lock.
* Reads use a connection per thread and never wait for the writer (WAL).
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlite_utils

from ledger import codec
from ledger.chain import GENESIS
from ledger.codec import LogEvent
from ledger.errors import ConcurrencyConflict, StorageUnavailable, TransactionRolledBack
from ledger.events import BlobRef
from ledger.log import Envelope, RecordedEvent, StoredEvent
from ledger.rows import EVENT_COLUMNS, STORED_COLUMNS, chain_events, row_to_recorded, row_to_stored
from ledger.sqlite import blobs
from ledger.sqlite.connection import SCHEMA, connect, storage_error
from ledger.sqlite.lock import ProcessWriteLock


class SqliteLog:
    """The EventLog on one SQLite file. ``schemas`` are the other tables' CREATE ... IF NOT
    EXISTS scripts, run in the same transaction as the log's own schema; ``migrations`` run
    before them, in a transaction of their own (each checks whether it is needed)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        schemas: Sequence[str] = (),
        migrations: Sequence[Callable[[sqlite3.Connection], None]] = (),
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        try:
            self._writer = connect(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc
        self._write_lock = threading.RLock()
        self._process_lock = ProcessWriteLock(self.path, busy_timeout_ms / 1000)
        #: (last position, its hash, its recorded_at) as this transaction left them: appends
        #: after the first in one transaction skip two reads. Only valid while the write
        #: transaction that set it is open (cleared at BEGIN, COMMIT, ROLLBACK, ROLLBACK TO).
        self._head: tuple[int, str, str] | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        #: The blob readers not yet closed (each has a connection of its own): closed with the log.
        self._blob_readers: weakref.WeakSet[blobs.SqliteBlobReader] = weakref.WeakSet()
        script = "BEGIN IMMEDIATE;" + SCHEMA + "".join(schemas) + "COMMIT;"
        with self._write_lock:
            try:
                if migrations:
                    self._migrate(migrations)
                self._writer.executescript(script)
            except sqlite3.Error as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise storage_error(exc) from exc

    def _migrate(self, migrations: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
        """Each migration checks whether it is needed; all of them in one transaction, rolled
        back whole on any error."""
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            for migrate in migrations:
                migrate(self._writer)
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def write_turn(self) -> Iterator[None]:
        """This process's turn to write: the in-process write lock and the cross-process one.
        Transactions opened inside it don't wait again. The group-commit writer takes its turn
        before it collects a batch, so commands that arrive while another process writes join
        this batch instead of waiting for the next."""
        with self._write_lock:
            try:
                self._process_lock.acquire()
            except OSError as exc:
                raise StorageUnavailable(
                    f"The database cannot be written right now (write lock {exc})"
                ) from exc
            try:
                yield
            finally:
                self._process_lock.release()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the write connection; ROLLBACK on any error."""
        with self._write_lock:
            conn = self._writer
            if conn.in_transaction:  # nested: the outer transaction commits
                yield conn
                return
            self._head = None
            with self.write_turn():
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise storage_error(exc) from exc
                try:
                    yield conn
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise storage_error(exc) from exc
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._head = None
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise storage_error(exc) from exc

    def check_writable(self) -> None:
        """A write turn and a rolled-back write: ``BEGIN IMMEDIATE``, a new table (which needs
        a new page, so a full file or a read-only one refuses it as it would any write), then
        ROLLBACK. Nothing reaches the file."""
        with self._write_lock:
            conn = self._writer
            if conn.in_transaction:  # this thread is inside a transaction: it is writing
                return
            with self.write_turn():
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute("CREATE TABLE main.ready_probe (x)")
                    finally:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    raise storage_error(exc) from exc

    @contextmanager
    def savepoint(self, tx: sqlite3.Connection, name: str) -> Iterator[None]:
        """A nested unit inside ``tx``: on error only its own writes are undone, and driver
        errors about the disk come out as StorageUnavailable.

        On some errors (a full disk, an I/O error) SQLite rolls back the whole transaction, not
        just the statement. Then there is no savepoint to return to, the units before this one
        are undone as well, and anything run next would run outside the transaction:
        TransactionRolledBack says so, and the caller must give up the whole transaction."""
        tx.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException as exc:
            self._head = None
            if not tx.in_transaction:
                cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
                raise TransactionRolledBack(
                    f"The database cannot be written right now ({cause or exc})"
                ) from exc
            tx.execute(f"ROLLBACK TO {name}")
            tx.execute(f"RELEASE {name}")
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc) from exc
            raise
        tx.execute(f"RELEASE {name}")

    @contextmanager
    def read_snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection inside one read transaction: every read sees the
        database as of one moment, however long the walk takes (verify, export)."""
        conn = self.reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(
                self.path, synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms
            )
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """A sqlite-utils view of the database, for tooling (not the hot path)."""
        return sqlite_utils.Database(self.reader())

    # -- events -----------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[LogEvent],
        envelope: Envelope,
        *,
        tx: sqlite3.Connection | None = None,
    ) -> list[RecordedEvent]:
        if tx is None:
            with self.transaction() as own:
                return self.append(stream_id, expected_version, events, envelope, tx=own)
        (current,) = tx.execute(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        if current != expected_version:
            raise ConcurrencyConflict(
                f"Stream {stream_id} is at version {current}, not {expected_version}"
            )
        rows, recorded, head = chain_events(
            self._head or self._chain_head(tx), stream_id, expected_version, events, envelope
        )
        for row in rows:
            self.insert_row(tx, row)  # each clears the head: it is set once all are in
        self._head = head
        return recorded

    def _chain_head(self, tx: sqlite3.Connection) -> tuple[int, str, str]:
        """The last position ever handed out (AUTOINCREMENT's counter, so positions are never
        reused), and the hash and recorded_at of the newest event."""
        seq = tx.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        last = tx.execute(
            "SELECT hash, recorded_at FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        return (seq[0] if seq else 0), *(last if last else (GENESIS, ""))

    def insert_row(self, tx: sqlite3.Connection, row: dict[str, object]) -> None:
        """Insert one stored event row as is (append computes it; import copies it)."""
        self._head = None
        try:
            tx.execute(
                "INSERT INTO events (position, stream_id, version, type, data, recorded_at,"
                " actor_key_id, actor_role, request_id, idempotency_key, hash)"
                " VALUES (:position, :stream_id, :version, :type, :data, :recorded_at,"
                " :actor_key_id, :actor_role, :request_id, :idempotency_key, :hash)",
                row,
            )
        except sqlite3.IntegrityError as exc:
            raise ConcurrencyConflict(
                f"Stream {row['stream_id']} already has version {row['version']}"
            ) from exc
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc

    def iter_stored(
        self, after: int = 0, *, tx: sqlite3.Connection | None = None, batch: int = 10_000
    ) -> Iterator[StoredEvent]:
        """Stored event rows in position order, as they are on disk (for verify and export)."""
        conn = tx or self.reader()
        while True:
            rows = conn.execute(
                f"SELECT {STORED_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, batch),
            ).fetchall()
            for r in rows:
                yield row_to_stored(r)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def iter_by_stream(
        self, *, tx: sqlite3.Connection | None = None
    ) -> Iterator[tuple[str, int, str]]:
        conn = tx or self.reader()
        yield from conn.execute(
            "SELECT stream_id, position, data FROM events ORDER BY stream_id, version"
        )

    def iter_data(self, *, tx: sqlite3.Connection | None = None) -> Iterator[tuple[str, str]]:
        conn = tx or self.reader()
        yield from conn.execute("SELECT stream_id, data FROM events ORDER BY position")

    def read_stream(
        self,
        stream_id: str,
        *,
        after: int = 0,
        until_version: int | None = None,
        limit: int | None = None,
        tx: sqlite3.Connection | None = None,
    ) -> list[RecordedEvent]:
        """A range of the stream by version: one seek in the ``(stream_id, version)`` index,
        then the rows asked for."""
        conn = tx or self.reader()
        rows = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version > ?"
            " AND version <= ? ORDER BY version LIMIT ?",
            (
                stream_id,
                after,
                until_version if until_version is not None else 2**62,
                limit if limit is not None else -1,
            ),
        ).fetchall()
        return [row_to_recorded(row) for row in rows]

    def stream_version(self, stream_id: str, *, tx: sqlite3.Connection | None = None) -> int:
        conn = tx or self.reader()
        (version,) = conn.execute(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        return version

    def version_at(
        self, stream_id: str, when: datetime, *, tx: sqlite3.Connection | None = None
    ) -> int:
        """A binary search over the stream's versions, each probe one seek in the
        ``(stream_id, version)`` index: about 17 rows for 100,000 events. It relies on
        recorded_at never going backwards along the log (``append`` sees to it), so the events
        recorded by ``when`` are a prefix of the stream. An index on ``(stream_id,
        recorded_at)`` would answer in one seek, but every append would pay to keep it."""
        conn = tx or self.reader()
        stamp = codec.timestamp(when)
        low, high = 0, self.stream_version(stream_id, tx=conn)
        # Versions 1..low were recorded at or before ``when``; versions after high were not.
        while low < high:
            middle = (low + high + 1) // 2
            (recorded_at,) = conn.execute(
                "SELECT recorded_at FROM events WHERE stream_id = ? AND version = ?",
                (stream_id, middle),
            ).fetchone()
            if recorded_at <= stamp:
                low = middle
            else:
                high = middle - 1
        return low

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        rows = (
            self.reader()
            .execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, limit),
            )
            .fetchall()
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
        (value,) = self.reader().execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
        return value

    # -- blobs (ledger.sqlite.blobs) ----------------------------------------------------------

    def put_blob(self, task_id: str, data: bytes, *, tx: sqlite3.Connection) -> BlobRef:
        return blobs.put_blob(tx, task_id, data)

    def get_blob(self, ref: BlobRef, *, tx: sqlite3.Connection | None = None) -> bytes | None:
        return blobs.get_blob(tx or self.reader(), ref)

    def read_blob(
        self, ref: BlobRef, offset: int, size: int, *, tx: sqlite3.Connection | None = None
    ) -> bytes | None:
        return blobs.read_blob(tx or self.reader(), ref, offset, size)

    def open_blob(self, ref: BlobRef, offset: int = 0) -> blobs.SqliteBlobReader:
        reader = blobs.SqliteBlobReader(self._blob_connection, ref, offset)
        with self._readers_lock:
            self._blob_readers.add(reader)
        return reader

    def _blob_connection(self) -> sqlite3.Connection:
        return connect(
            self.path, synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms
        )

    def purge_blobs(self, task_id: str, *, tx: sqlite3.Connection) -> int:
        return blobs.purge_blobs(tx, task_id)

    def iter_blobs(
        self, *, tx: sqlite3.Connection | None = None
    ) -> Iterator[tuple[str, bytes, list[str]]]:
        return blobs.iter_blobs(tx or self.reader())

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """SQLite cannot tell one process about another's commits: never called back (the
        service's watch reads the last position while anyone waits)."""
        return lambda: None

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            open_readers = list(self._blob_readers)
        for reader in open_readers:
            reader.close()
        with self._write_lock:
            self._writer.close()
            self._process_lock.close()
        self._local = threading.local()
