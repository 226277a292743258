"""The SQLite EventLog: WAL, ``synchronous=FULL`` by default, append-only by trigger.

* ``events.position`` is ``INTEGER PRIMARY KEY AUTOINCREMENT``: a position is never reused, even
  after the newest event's row is gone (it never is: triggers forbid UPDATE and DELETE).
* ``UNIQUE(stream_id, version)`` gives optimistic concurrency; the driver's IntegrityError becomes
  ConcurrencyConflict here and nowhere else.
* Writes go through one connection per process, serialised by a lock, inside ``BEGIN IMMEDIATE``;
  several processes on one file take turns through an exclusive ``flock`` on a side file
  (``<db>-writelock``) before they begin, waiting in the kernel, instead of polling in SQLite's
  busy handler (which sleeps up to 100 ms a try); both give up after the busy timeout. SQLite's
  own lock still guards against writers that don't take the side lock (`keys create`'s plain
  connection, another program).
* Reads use a connection per thread and never wait for the writer (WAL).
"""

from __future__ import annotations

import base64
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import sqlite_utils

from ledger import codec
from ledger.chain import GENESIS, chain_hash
from ledger.errors import (
    ConcurrencyConflict,
    LedgerError,
    StorageUnavailable,
    TransactionRolledBack,
)
from ledger.events import AnyEvent, BlobRef, blob_ref, tag_of
from ledger.log import Actor, Envelope, RecordedEvent

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy timeout alone serialises the processes
    fcntl = None  # type: ignore[assignment]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    actor_key_id TEXT,
    actor_role TEXT NOT NULL,
    request_id TEXT,
    idempotency_key TEXT,
    hash TEXT NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS events_type ON events (type, position);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed');
END;
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_refs (
    task_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (task_id, sha256)
);
CREATE INDEX IF NOT EXISTS blob_refs_sha ON blob_refs (sha256);
"""

EXPORT_FORMAT = "taskledger-export"


class ImportRefused(LedgerError):
    """An export file that cannot be imported as it is (broken chain, bad record, non-empty db)."""


EVENT_COLUMNS = (
    "position, stream_id, version, data, recorded_at, actor_key_id, actor_role, "
    "request_id, idempotency_key, hash"
)

#: Text of the SQLite errors that mean "cannot write now", not "bad request".
_STORAGE_ERRORS = (
    "database or disk is full",
    "readonly database",
    "read-only",
    "database is locked",
    "disk i/o error",
    "unable to open database",
)


def storage_error(exc: sqlite3.Error) -> Exception:
    """Map a driver error to StorageUnavailable when it is about the disk, else return it."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and any(s in text for s in _STORAGE_ERRORS):
        return StorageUnavailable(f"The database cannot be written right now ({exc})")
    return exc


def connect(
    path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return conn


def row_to_recorded(row: tuple) -> RecordedEvent:
    position, stream_id, version, data, recorded_at, key_id, role, request_id, idem, hash_ = row
    return RecordedEvent(
        position=position,
        stream_id=stream_id,
        version=version,
        recorded_at=codec.parse_timestamp(recorded_at),
        actor=Actor(key_id=key_id, role=role),
        request_id=request_id,
        idempotency_key=idem,
        event=codec.decode_event(data),
        hash=hash_,
    )


class _Ticket:
    """One wait for the lock on the helper thread: granted, or given up by the waiter."""

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.lock = threading.Lock()
        self.abandoned = False


class ProcessWriteLock:
    """An exclusive ``flock`` on ``<db>-writelock`` that the writers of every process on one
    database take around their write transactions. A free lock is taken at once; a held one is
    waited for in the kernel (``flock`` on a helper thread, the GIL released), which wakes the
    moment the other process lets go. Without it, a process that finds the database locked polls
    in SQLite's busy handler, sleeping 1, 2, 5 ... 100 ms between tries, and two busy server
    processes spend much of their time asleep. After ``timeout`` seconds (the busy timeout) the
    waiter gives up with StorageUnavailable, as SQLite's busy handler would, so a process that
    holds the lock for long (a ``taskledger rebuild``, a stopped process) costs the others a
    503, not a hang; the helper lets the lock go again if it gets it after that. The lock dies
    with its process, so a crashed writer never leaves it held. Re-entrant within the thread
    that holds the log's write lock (callers hold that lock around acquire/release)."""

    def __init__(self, db_path: Path, timeout: float = 10.0) -> None:
        self.path = Path(f"{db_path}-writelock")
        self.timeout = timeout
        self._fd: int | None = None  # tried without blocking by the writer
        self._wait_fd: int | None = None  # waited on by the helper (a lock of its own)
        self._held: int | None = None  # whichever of the two holds the lock now
        self._depth = 0
        self._tickets: queue.SimpleQueue[tuple[int, _Ticket] | None] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:  # made by another user: flock needs no write access
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def acquire(self) -> None:
        if fcntl is None:
            return
        if self._depth == 0:
            if self._fd is None:
                self._fd = self._open()
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = self._fd
            except BlockingIOError:
                self._held = self._wait()
        self._depth += 1

    def _wait(self) -> int:
        if self._wait_fd is None:
            self._wait_fd = self._open()
        if self._helper is None:
            self._helper = threading.Thread(
                target=self._serve, name="taskledger-writelock", daemon=True
            )
            self._helper.start()
        ticket = _Ticket()
        self._tickets.put((self._wait_fd, ticket))
        if not ticket.granted.wait(self.timeout):
            with ticket.lock:
                if not ticket.granted.is_set():
                    ticket.abandoned = True
                    raise StorageUnavailable(
                        "The database cannot be written right now (another process has held"
                        f" its write lock for {self.timeout:g} s)"
                    )
        return self._wait_fd

    def _serve(self) -> None:  # the helper thread
        while True:
            item = self._tickets.get()
            if item is None:  # the log is closing: this thread owns the waiting fd
                if self._wait_fd is not None:
                    os.close(self._wait_fd)
                    self._wait_fd = None
                return
            fd, ticket = item
            fcntl.flock(fd, fcntl.LOCK_EX)
            with ticket.lock:
                if ticket.abandoned:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    continue
                ticket.granted.set()

    def release(self) -> None:
        if fcntl is None or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._held is not None:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._held = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        if self._helper is not None:
            # The helper closes the waiting fd once it is done with any wait in progress (a
            # wait that never ends leaves it open until the process exits).
            self._tickets.put(None)
            self._helper = None
        elif self._wait_fd is not None:
            os.close(self._wait_fd)
            self._wait_fd = None
        self._fd = self._held = None
        self._depth = 0


class SqliteLog:
    """The EventLog on one SQLite file. ``schemas`` are the projections' CREATE ... IF NOT EXISTS
    scripts, run in the same transaction as the log's own schema."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        schemas: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._writer = connect(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        self._write_lock = threading.RLock()
        self._process_lock = ProcessWriteLock(self.path, busy_timeout_ms / 1000)
        #: (last position, its hash, its recorded_at) as this transaction left them: appends
        #: after the first in one transaction skip two reads. Only valid while the write
        #: transaction that set it is open (cleared at BEGIN, COMMIT, ROLLBACK, ROLLBACK TO).
        self._head: tuple[int, str, str] | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        script = "BEGIN IMMEDIATE;" + SCHEMA + "".join(schemas) + "COMMIT;"
        with self._write_lock:
            try:
                self._writer.executescript(script)
            except sqlite3.Error as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise storage_error(exc) from exc

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
            conn = connect(self.path, synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms)
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
        events: Sequence[AnyEvent],
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
        position, previous, last_recorded_at = self._head or self._chain_head(tx)
        # recorded_at never goes backwards along the log, whatever the clocks of several writer
        # processes say, so "the log as of time T" is always a prefix of it.
        stamp = codec.timestamp(envelope.recorded_at)
        if stamp >= last_recorded_at:
            recorded_at, when = stamp, envelope.recorded_at.astimezone(UTC)
        else:
            recorded_at, when = last_recorded_at, codec.parse_timestamp(last_recorded_at)
        recorded: list[RecordedEvent] = []
        for offset, event in enumerate(events, start=1):
            version = expected_version + offset
            position += 1
            row = {
                "position": position,
                "stream_id": stream_id,
                "version": version,
                "type": tag_of(type(event)),
                "data": codec.encode_str(event),
                "recorded_at": recorded_at,
                "actor_key_id": envelope.actor.key_id,
                "actor_role": envelope.actor.role,
                "request_id": envelope.request_id,
                "idempotency_key": envelope.idempotency_key,
            }
            previous = chain_hash(previous, **row)
            self.insert_row(tx, {**row, "hash": previous})
            recorded.append(
                RecordedEvent(
                    position=position,
                    stream_id=stream_id,
                    version=version,
                    recorded_at=when,
                    actor=envelope.actor,
                    request_id=envelope.request_id,
                    idempotency_key=envelope.idempotency_key,
                    event=event,
                    hash=previous,
                )
            )
        self._head = (position, previous, recorded_at)
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

    def iter_rows(self, after: int = 0, batch: int = 10_000) -> Iterator[dict[str, object]]:
        """Stored event rows in position order, as they are on disk (for verify and export)."""
        conn = self.reader()
        while True:
            rows = conn.execute(
                "SELECT position, stream_id, version, type, data, recorded_at, actor_key_id,"
                " actor_role, request_id, idempotency_key, hash FROM events WHERE position > ?"
                " ORDER BY position LIMIT ?",
                (after, batch),
            ).fetchall()
            for r in rows:
                yield {
                    "position": r[0], "stream_id": r[1], "version": r[2], "type": r[3],
                    "data": r[4], "recorded_at": r[5], "actor_key_id": r[6], "actor_role": r[7],
                    "request_id": r[8], "idempotency_key": r[9], "hash": r[10],
                }
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def read_stream(
        self,
        stream_id: str,
        *,
        until_version: int | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> list[RecordedEvent]:
        conn = conn or self.reader()
        rows = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version <= ?"
            " ORDER BY version",
            (stream_id, until_version if until_version is not None else 2**62),
        ).fetchall()
        return [row_to_recorded(row) for row in rows]

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        rows = self.reader().execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, limit),
        ).fetchall()
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

    # -- blobs ------------------------------------------------------------------------------

    def put_blob(self, task_id: str, data: bytes, *, tx: sqlite3.Connection) -> BlobRef:
        """Store ``data`` once by its sha256 and note that ``task_id`` refers to it."""
        ref = blob_ref(data)
        tx.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
            (ref.sha256, ref.size, data),
        )
        tx.execute(
            "INSERT OR IGNORE INTO blob_refs (task_id, sha256) VALUES (?, ?)", (task_id, ref.sha256)
        )
        return ref

    def get_blob(self, ref: BlobRef, *, conn: sqlite3.Connection | None = None) -> bytes | None:
        """The blob's bytes (None once purged); ``conn`` to read inside a write transaction."""
        conn = conn or self.reader()
        row = conn.execute("SELECT data FROM blobs WHERE sha256 = ?", (ref.sha256,)).fetchone()
        return bytes(row[0]) if row else None

    def purge_blobs(self, task_id: str, *, tx: sqlite3.Connection) -> int:
        """Drop the task's references and every blob no other task refers to. Events stay."""
        shas = [r[0] for r in tx.execute("SELECT sha256 FROM blob_refs WHERE task_id = ?", (task_id,))]
        tx.execute("DELETE FROM blob_refs WHERE task_id = ?", (task_id,))
        purged = 0
        for sha in shas:
            purged += tx.execute(
                "DELETE FROM blobs WHERE sha256 = ? AND NOT EXISTS"
                " (SELECT 1 FROM blob_refs WHERE sha256 = ?)",
                (sha, sha),
            ).rowcount
        return purged

    # -- export, import, backup ---------------------------------------------------------------

    def export_records(self) -> Iterator[dict[str, object]]:
        """The whole log as records: a header, every event row as stored (hash included), then
        every blob and blob reference. ``import_records`` takes them back."""
        with self.read_snapshot():
            yield from self._export_records()

    def _export_records(self) -> Iterator[dict[str, object]]:
        yield {"kind": "header", "format": EXPORT_FORMAT, "version": 1}
        events, last_hash = 0, GENESIS
        for row in self.iter_rows():
            events, last_hash = events + 1, row["hash"]
            yield {"kind": "event", **row}
        conn = self.reader()
        for sha, size, data in conn.execute("SELECT sha256, size, data FROM blobs ORDER BY sha256"):
            yield {
                "kind": "blob",
                "sha256": sha,
                "size": size,
                "data": base64.b64encode(bytes(data)).decode(),
            }
        for task_id, sha in conn.execute(
            "SELECT task_id, sha256 FROM blob_refs ORDER BY task_id, sha256"
        ):
            yield {"kind": "blob_ref", "task_id": task_id, "sha256": sha}
        # The footer lets an import tell a whole export from one cut short.
        yield {"kind": "footer", "events": events, "last_hash": last_hash}

    def import_records(
        self,
        records: Iterable[dict[str, object]],
        *,
        tx: sqlite3.Connection,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Load exported records into this (empty) log inside ``tx``, checking the hash chain
        and every blob's sha256 as it goes. ImportRefused on the first fault: the caller's
        transaction then rolls back and nothing is written."""
        if tx.execute("SELECT 1 FROM events LIMIT 1").fetchone():
            raise ImportRefused("The target database already holds events; import into a new one")
        previous, last_position, count, footer = GENESIS, 0, 0, None
        for number, record in enumerate(records, start=1):
            kind = record.get("kind")
            if footer is not None:
                raise ImportRefused(f"Line {number}: records after the footer")
            if number == 1:
                if kind != "header" or record.get("format") != EXPORT_FORMAT:
                    raise ImportRefused("Not a taskledger export (no header line)")
                continue
            if kind == "event":
                row = {k: v for k, v in record.items() if k != "kind"}
                stored = row.pop("hash", None)
                position = row.get("position")
                if not isinstance(position, int) or position <= last_position:
                    raise ImportRefused(f"Line {number}: positions must strictly increase")
                try:
                    expected = chain_hash(previous, **row)  # type: ignore[arg-type]
                except TypeError:
                    raise ImportRefused(f"Line {number}: not an event record") from None
                if stored != expected:
                    raise ImportRefused(
                        f"Hash chain broken at position {position}: the export was altered"
                    )
                self.insert_row(tx, {**row, "hash": stored})
                previous, last_position, count = stored, position, count + 1
                if progress:
                    progress(1)
            elif kind == "blob":
                data = base64.b64decode(str(record["data"]))
                ref = blob_ref(data)
                if ref.sha256 != record.get("sha256"):
                    raise ImportRefused(f"Line {number}: blob content does not match its sha256")
                tx.execute(
                    "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
                    (ref.sha256, ref.size, data),
                )
            elif kind == "blob_ref":
                tx.execute(
                    "INSERT OR IGNORE INTO blob_refs (task_id, sha256) VALUES (?, ?)",
                    (record["task_id"], record["sha256"]),
                )
            elif kind == "footer":
                footer = record
            else:
                raise ImportRefused(f"Line {number}: unknown record kind {kind!r}")
        if footer is None:
            raise ImportRefused("The export has no footer: it was cut short")
        if footer.get("events") != count or footer.get("last_hash") != previous:
            raise ImportRefused(
                f"The export's footer says {footer.get('events')} events ending in hash "
                f"{footer.get('last_hash')}, but it holds {count} ending in {previous}"
            )
        return count

    def backup(self, destination: str | Path) -> None:
        """An online, consistent copy of the whole database (SQLite's backup API): writers keep
        going while it runs, and the copy is the database as of one moment."""
        destination = Path(destination)
        if destination.exists():
            raise FileExistsError(f"{destination} already exists")
        target = sqlite3.connect(str(destination))
        try:
            source = connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
            try:
                source.backup(target)
            finally:
                source.close()
        finally:
            target.close()

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()
            self._process_lock.close()
        self._local = threading.local()
