"""Content-addressed blobs (input files, outputs) and which tasks refer to them.

Blobs are stored whole and uncompressed in one column (``blobs.data``), so SQLite's incremental
blob I/O reads any part of one without loading the rest: ``read_blob`` (one piece, one short
read) and ``SqliteBlobReader`` (a blob in order, piece by piece).

Finding a piece far into a large blob costs SQLite a walk down the blob's chain of overflow
pages from its start (a 30 MiB blob read in fresh 256 KiB reads costs about half a second
where one read costs 30 ms: the walks add up quadratically). ``SqliteBlobReader`` keeps its blob
handle open between pieces, which remembers where it is, but only while its reader keeps up:
``release`` (called by whoever streams it when the consumer stalls) and a cap on how long one
handle is held end the read transaction, so a stalled download never keeps the WAL from being
checkpointed; the next piece opens the blob again where it left off (one walk).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from ledger.events import BlobRef, blob_ref

#: Blobs this size or larger are written in place (``put_blob``), in pieces of WRITE_PIECE.
WRITE_IN_PLACE = 1024 * 1024
WRITE_PIECE = 1024 * 1024
#: The page cache of a blob reader's connection (KiB): holding its blob handle open, a reader
#: needs a few pages at a time, not SQLite's default 2 MiB, which a stalled download would keep.
READER_CACHE_KIB = 128
#: The longest one read transaction of a ``SqliteBlobReader`` is held (seconds), however fast
#: its reader keeps up: the next piece after it takes a new one.
MAX_HOLD = 1.0


def put_blob(tx: sqlite3.Connection, task_id: str, data: bytes) -> BlobRef:
    """Store ``data`` once by its sha256 and note that ``task_id`` refers to it.

    A large blob is written in place, piece by piece, into a row made with a ``zeroblob`` of
    its size: bound as a parameter, SQLite would copy all of it twice (the bound value, then
    the record it builds) before writing its pages."""
    ref = blob_ref(data)
    if ref.size < WRITE_IN_PLACE:
        tx.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
            (ref.sha256, ref.size, data),
        )
    else:
        cursor = tx.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, zeroblob(?))",
            (ref.sha256, ref.size, ref.size),
        )
        if cursor.rowcount == 1:
            assert cursor.lastrowid is not None
            whole = memoryview(data)
            with tx.blobopen("blobs", "data", cursor.lastrowid) as blob:
                for start in range(0, ref.size, WRITE_PIECE):
                    blob.write(whole[start : start + WRITE_PIECE])
    tx.execute(
        "INSERT OR IGNORE INTO blob_refs (task_id, sha256) VALUES (?, ?)", (task_id, ref.sha256)
    )
    return ref


def get_blob(conn: sqlite3.Connection, ref: BlobRef) -> bytes | None:
    """The blob's bytes (None once purged)."""
    row = conn.execute("SELECT data FROM blobs WHERE sha256 = ?", (ref.sha256,)).fetchone()
    return bytes(row[0]) if row else None


def read_blob(conn: sqlite3.Connection, ref: BlobRef, offset: int, size: int) -> bytes | None:
    """Up to ``size`` bytes of the blob from ``offset``, by SQLite's incremental blob I/O: only
    those bytes are read and copied, never the whole value (None once purged).

    The row is found and read in one read transaction, so the bytes are the blob's even if it
    is purged at that moment (a purged blob's rowid may be reused by the next blob stored). No
    transaction outlives the call: a download read piece by piece holds no snapshot between
    pieces, which would keep the WAL from being checkpointed while a client stalls."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT rowid FROM blobs WHERE sha256 = ?", (ref.sha256,)).fetchone()
        if row is None:
            return None
        with conn.blobopen("blobs", "data", row[0], readonly=True) as blob:
            blob.seek(min(offset, len(blob)))
            return blob.read(size)
    finally:
        if own:
            conn.execute("COMMIT")


class SqliteBlobReader:
    """``ledger.log.BlobReader`` on a connection of its own (opened at the first piece,
    closed by ``close``), which holds a read transaction and the blob handle between pieces
    until ``release`` or ``MAX_HOLD``. Its calls may come from any thread, one at a time or
    not (a lock orders them)."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        ref: BlobRef,
        offset: int = 0,
        *,
        max_hold: float = MAX_HOLD,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._ref = ref
        self._offset = offset
        self._max_hold = max_hold
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._blob: sqlite3.Blob | None = None
        self._taken = 0.0
        self._closed = False
        #: How many times the blob was opened (each a walk to the offset): for the tests.
        self.opened = 0

    @property
    def offset(self) -> int:
        return self._offset

    def read(self, size: int) -> bytes | None:
        with self._lock:
            if self._closed:
                raise ValueError("the blob reader is closed")
            if self._blob is not None and self._monotonic() - self._taken >= self._max_hold:
                self._let_go()
            if self._blob is None and not self._take():
                return None
            assert self._blob is not None
            data = self._blob.read(size)
            self._offset += len(data)
            return data

    def _take(self) -> bool:
        """Open the blob at the offset in a new read transaction; False if it is gone."""
        if self._conn is None:
            self._conn = self._connect()
            self._conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
        conn = self._conn
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT rowid FROM blobs WHERE sha256 = ?", (self._ref.sha256,)
            ).fetchone()
            if row is None:
                conn.execute("COMMIT")
                return False
            blob = conn.blobopen("blobs", "data", row[0], readonly=True)
            blob.seek(min(self._offset, len(blob)))
        except BaseException:
            if conn.in_transaction:
                conn.execute("COMMIT")
            raise
        self._blob, self._taken = blob, self._monotonic()
        self.opened += 1
        return True

    def _let_go(self) -> None:
        if self._blob is not None:
            self._blob.close()
            self._blob = None
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("COMMIT")
            self._conn.execute("PRAGMA shrink_memory")

    def release(self) -> None:
        with self._lock:
            if not self._closed:
                self._let_go()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._let_go()
            finally:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None


def purge_blobs(tx: sqlite3.Connection, task_id: str) -> int:
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


def iter_blobs(conn: sqlite3.Connection) -> Iterator[tuple[str, bytes, list[str]]]:
    """Every stored blob: its address, its bytes and the tasks that refer to it."""
    for sha, data in conn.execute("SELECT sha256, data FROM blobs ORDER BY sha256"):
        owners = [
            r[0] for r in conn.execute("SELECT task_id FROM blob_refs WHERE sha256 = ?", (sha,))
        ]
        yield sha, bytes(data), owners
