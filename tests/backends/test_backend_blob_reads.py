"""EventLog contract: reading a blob in pieces (``read_blob``, ``open_blob``) without holding
the rest of it, and large blobs written and read back whole."""

from __future__ import annotations

import os
import threading

import pytest
from backend_support import FILE_BYTES, blobs

from ledger.events import blob_ref

#: Large enough to span many database pages, and not a multiple of any piece size below.
LARGE = os.urandom(3 * 1024 * 1024 + 12_345)


def put(backend, task_id: str, data: bytes):
    with backend.log.transaction() as tx:
        return backend.log.put_blob(task_id, data, tx=tx)


def read_all(reader, piece: int, *, release: bool = False) -> bytes:
    parts = []
    while chunk := reader.read(piece):
        assert len(chunk) <= piece
        parts.append(chunk)
        if release:
            reader.release()
    return b"".join(parts)


def test_a_large_blob_is_stored_once_and_read_back_whole(backend):
    ref = put(backend, "a", LARGE)
    assert put(backend, "b", LARGE) == ref == blob_ref(LARGE)
    assert backend.log.get_blob(ref) == LARGE
    assert blobs(backend) == [(ref.sha256, LARGE, ["a", "b"])]


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 1024 * 1024, len(LARGE) - 1])
@pytest.mark.parametrize("size", [1, 1000, 256 * 1024])
def test_read_blob_gives_the_piece_asked_for(backend, offset, size):
    ref = put(backend, "a", LARGE)
    assert backend.log.read_blob(ref, offset, size) == LARGE[offset : offset + size]


def test_read_blob_past_the_end_is_empty_and_of_a_missing_blob_none(backend):
    ref = put(backend, "a", FILE_BYTES)
    assert backend.log.read_blob(ref, len(FILE_BYTES), 10) == b""
    assert backend.log.read_blob(ref, len(FILE_BYTES) + 10, 10) == b""
    assert backend.log.read_blob(blob_ref(b"never stored"), 0, 10) is None


def test_read_blob_inside_a_transaction_sees_its_own_writes(backend, other):
    with backend.log.transaction() as tx:
        ref = backend.log.put_blob("a", LARGE, tx=tx)
        assert backend.log.read_blob(ref, 10, 100, tx=tx) == LARGE[10:110]
        assert other.log.read_blob(ref, 10, 100) is None
    assert other.log.read_blob(ref, 10, 100) == LARGE[10:110]


@pytest.mark.parametrize("piece", [1000, 64 * 1024, 256 * 1024, 10 * 1024 * 1024])
@pytest.mark.parametrize("release", [False, True])
def test_a_blob_reader_gives_the_whole_blob_in_order(backend, piece, release):
    ref = put(backend, "a", LARGE)
    reader = backend.log.open_blob(ref)
    try:
        assert read_all(reader, piece, release=release) == LARGE
        assert reader.read(piece) == b"", "past the end: nothing more"
    finally:
        reader.close()


def test_a_blob_reader_starts_at_its_offset(backend):
    ref = put(backend, "a", LARGE)
    reader = backend.log.open_blob(ref, 777_777)
    try:
        assert read_all(reader, 100_000) == LARGE[777_777:]
    finally:
        reader.close()


def test_a_blob_reader_of_a_missing_blob_reads_none(backend):
    reader = backend.log.open_blob(blob_ref(b"never stored"))
    try:
        assert reader.read(10) is None
    finally:
        reader.close()


def test_a_closed_blob_reader_refuses_reads_and_closes_again_quietly(backend):
    reader = backend.log.open_blob(put(backend, "a", FILE_BYTES))
    assert reader.read(4) == FILE_BYTES[:4]
    reader.close()
    reader.close()
    reader.release()
    with pytest.raises(ValueError):
        reader.read(4)


def test_a_blob_purged_while_its_reader_let_go_reads_none_never_other_bytes(backend, other):
    ref = put(backend, "a", LARGE)
    reader = backend.log.open_blob(ref)
    try:
        assert reader.read(1000) == LARGE[:1000]
        reader.release()
        with other.log.transaction() as tx:
            assert other.log.purge_blobs("a", tx=tx) == 1
        # Another blob of the same size takes its place in the store.
        put(other, "b", os.urandom(len(LARGE)))
        assert reader.read(1000) is None
    finally:
        reader.close()


def test_a_blob_purged_while_its_reader_holds_on_gives_its_bytes_or_none(backend, other):
    ref = put(backend, "a", LARGE)
    reader = backend.log.open_blob(ref)
    try:
        first = reader.read(1000)
        with other.log.transaction() as tx:
            other.log.purge_blobs("a", tx=tx)
        put(other, "b", os.urandom(len(LARGE)))
        rest = []
        while chunk := reader.read(64 * 1024):
            rest.append(chunk)
        got = first + b"".join(rest)
        assert LARGE.startswith(got), "whatever it gives is the blob's own bytes"
    finally:
        reader.close()


def test_a_blob_reader_may_be_used_and_let_go_from_other_threads(backend):
    ref = put(backend, "a", LARGE)
    reader = backend.log.open_blob(ref)
    parts: list[bytes] = []

    def take(n: int) -> None:
        chunk = reader.read(100_000)
        assert chunk is not None
        parts.append(chunk)
        if n % 2:
            reader.release()

    try:
        for n in range(len(LARGE) // 100_000 + 1):
            thread = threading.Thread(target=take, args=(n,))
            thread.start()
            thread.join()
        assert b"".join(parts) == LARGE
    finally:
        reader.close()


def test_closing_the_log_closes_its_blob_readers(backends):
    backend = backends.create()
    reader = backend.log.open_blob(put(backend, "a", LARGE))
    assert reader.read(10) == LARGE[:10]
    backend.close()
    with pytest.raises(ValueError):
        reader.read(10)
