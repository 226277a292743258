"""The SQLite blob store's own choices (ledger/sqlite/blobs.py): large blobs written in place,
and a blob reader that holds its read transaction only while it is read, never through a
stall, so the WAL can always be checkpointed."""

from __future__ import annotations

import os
import sqlite3

import pytest

from ledger.sqlite import SqliteBackend
from ledger.sqlite import blobs as sqlite_blobs

LARGE = os.urandom(3 * 1024 * 1024 + 5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend(tmp_path):
    backend = SqliteBackend(tmp_path / "blobs.db")
    yield backend
    backend.close()


def put(backend: SqliteBackend, task_id: str, data: bytes):
    with backend.log.transaction() as tx:
        return backend.log.put_blob(task_id, data, tx=tx)


def checkpoint_blocked(path) -> bool:
    """Whether a TRUNCATE checkpoint from another connection is kept from finishing (by a
    reader's snapshot)."""
    conn = sqlite3.connect(path, timeout=0)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(busy)
    finally:
        conn.close()


def reader(backend: SqliteBackend, ref, clock: Clock) -> sqlite_blobs.SqliteBlobReader:
    return sqlite_blobs.SqliteBlobReader(
        backend.log._blob_connection, ref, max_hold=1.0, monotonic=clock
    )


def test_a_large_blob_is_written_in_place_and_reads_back(backend):
    assert len(LARGE) >= sqlite_blobs.WRITE_IN_PLACE
    ref = put(backend, "a", LARGE)
    assert backend.log.get_blob(ref) == LARGE
    (size, stored) = (
        backend.log.reader()
        .execute("SELECT size, length(data) FROM blobs WHERE sha256 = ?", (ref.sha256,))
        .fetchone()
    )
    assert size == stored == len(LARGE)


def test_a_reader_keeps_its_blob_open_while_it_is_read(backend):
    clock = Clock()
    blob = reader(backend, put(backend, "a", LARGE), clock)
    try:
        while blob.read(100_000):
            clock.now += 0.01
        assert blob.opened == 1, "one walk to the offset, not one per piece"
    finally:
        blob.close()


def test_a_reader_lets_go_after_its_longest_hold_and_takes_it_again(backend):
    clock = Clock()
    blob = reader(backend, put(backend, "a", LARGE), clock)
    try:
        assert blob.read(1000) == LARGE[:1000]
        clock.now += 1.0
        assert blob.read(1000) == LARGE[1000:2000]
        assert blob.opened == 2
    finally:
        blob.close()


def test_a_stalled_reader_that_let_go_does_not_keep_the_wal_from_a_checkpoint(backend):
    clock = Clock()
    path = backend.log.path
    blob = reader(backend, put(backend, "a", LARGE), clock)
    try:
        assert blob.read(1000) == LARGE[:1000]
        put(backend, "b", b"a write after the reader's snapshot")
        assert checkpoint_blocked(path), "holding on: its snapshot pins the WAL"
        blob.release()
        assert not checkpoint_blocked(path), "let go: nothing pins the WAL"
        assert blob.read(1000) == LARGE[1000:2000]
    finally:
        blob.close()
    assert not checkpoint_blocked(path)


def test_a_read_of_one_piece_holds_nothing_afterwards(backend):
    ref = put(backend, "a", LARGE)
    assert backend.log.read_blob(ref, 1000, 1000) == LARGE[1000:2000]
    put(backend, "b", b"a write after the read")
    assert not checkpoint_blocked(backend.log.path)
