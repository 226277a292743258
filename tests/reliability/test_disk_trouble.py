"""Disk trouble is an error, not corruption.

When SQLite cannot write, every mutating request gets 503 with a message saying so (and
Retry-After), reads keep working, nothing is half-written (no event without its projection, no
blob or idempotency record of a refused request, no request told 2xx for a write that was undone)
and writes resume, with no repair, once the condition clears.

The server runs in this process (uvicorn in a thread) so the tests can reach its own writer
connection:

* A full database: ``PRAGMA max_page_count`` on the writer connection, set to the file's current
  size, is SQLite's own "database or disk is full" (SQLITE_FULL) for any write that needs a new
  page. SQLite may roll back the whole transaction on that error, which a group-commit batch
  must survive.
* A file that cannot be written: ``chattr +i`` makes the database file and its WAL immutable, so
  the kernel refuses every write to them, root's included (the tests run as root, so file
  permissions would not stop anyone). SQLite reports it as "disk I/O error". Needs a file system
  with the immutable attribute (ext4, xfs, btrfs) and CAP_LINUX_IMMUTABLE; skipped otherwise.
* SQLite's own read-only state ("attempt to write a readonly database", SQLITE_READONLY), which
  is what SQLite gives a process that opens a file it may not write: the writer connection is
  swapped for one opened with ``mode=ro``. This checks the mapping of that error; it is not a
  file condition.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest
from reliability_support import (
    FILE,
    InProcessServer,
    add_key,
    assert_log_sound,
    event_types,
    new_id,
    query,
)

from api.composition import Store
from api.settings import Settings
from ledger.commands import CreateTask
from ledger.errors import StorageUnavailable
from ledger.events import blob_ref
from ledger.handler import Request
from ledger.log import Actor, Envelope

MESSAGE = "The database cannot be written right now"
TABLES = ("events", "tasks", "queue", "blobs", "blob_refs", "idempotency_outcomes")
NO_LIMIT = 1_073_741_823  # SQLite's default max_page_count


@pytest.fixture
def app_server(tmp_path):
    server = InProcessServer(Settings(db_path=tmp_path / "ledger.db", sweep_interval=0)).start()
    yield server
    server.stop()


def counts(db, tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    return {table: query(db, f"SELECT count(*) FROM {table}")[0][0] for table in tables}


def big_file(size: int = 256 * 1024) -> tuple[str, str]:
    """Random (incompressible) bytes as base64, and their sha256."""
    data = os.urandom(size)
    return base64.b64encode(data).decode(), hashlib.sha256(data).hexdigest()


@contextmanager
def max_pages(log, pages: int | None):
    """Cap the writer connection at ``pages`` (None: the file's current size), then lift it."""
    with log._write_lock:
        if pages is None:
            (pages,) = log._writer.execute("PRAGMA page_count").fetchone()
        log._writer.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        with log._write_lock:
            log._writer.execute(f"PRAGMA max_page_count = {NO_LIMIT}")


def assert_unavailable(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.text == f"{MESSAGE} ({reason})"
    assert response.headers["content-type"].startswith("text/plain")
    assert int(response.headers["retry-after"]) > 0


def assert_reads_work(server: InProcessServer, client: httpx.Client, task_id: str) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert client.get(f"/task/{task_id}").status_code == 200
    assert client.get("/tasks").status_code == 200
    assert client.get(f"/task/{task_id}/events").status_code == 200
    assert client.get("/events").status_code == 200


def test_a_full_database_answers_503_keeps_reads_and_recovers(app_server):
    db, log = app_server.service.store.path, app_server.service.store.log
    alice, worker = add_key(db, "alice"), add_key(db, "pool", "worker")
    with app_server.client(alice) as user, app_server.client(worker) as w:
        starting = [
            user.post("/task/parse", json={"file": FILE}).json()["task_id"] for _ in range(40)
        ]
        big, sha = big_file()
        with max_pages(log, None):
            before = counts(db)
            # A write that needs many new pages is refused, and leaves nothing behind.
            refused = user.post(
                "/task/parse", json={"file": big}, headers={"Idempotency-Key": "big"}
            )
            assert_unavailable(refused, "database or disk is full")
            assert counts(db) == before
            assert query(db, "SELECT count(*) FROM blobs WHERE sha256 = ?", (sha,))[0][0] == 0

            # Small writes fill what room is left in the file's pages, then are refused too:
            # each answer is 200 (and in the log) or 503 (and not).
            answers = []
            for task_id in starting:
                response = user.get(f"/task/{task_id}/cancel")
                answers.append(response.status_code)
                if response.status_code == 200:
                    assert event_types(db, task_id) == ["task_created", "cancelled"]
                else:
                    assert_unavailable(response, "database or disk is full")
                    assert event_types(db, task_id) == ["task_created"]
                    assert user.get(f"/task/{task_id}").json()["status"] == "Starting"
            assert 503 in answers, "the capped file never ran out of room"
            claim = w.post("/worker/claim", json={"worker_id": "w1"})
            if claim.status_code == 200:
                assert event_types(db, claim.json()["task_id"])[-1] == "claimed"
            else:
                assert_unavailable(claim, "database or disk is full")

            # Several writers at once (group commit batches them together): whoever is told 200
            # is in the log, and nobody told 503 is.
            calls = [{"file": FILE}] * 6 + [{"file": big}] * 2
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda body: user.post("/task/parse", json=body), calls))
            for response in results:
                assert response.status_code in (200, 503), response.text
                if response.status_code == 503:
                    assert_unavailable(response, "database or disk is full")
            acked = [r.json()["task_id"] for r in results if r.status_code == 200]
            for task_id in acked:
                assert event_types(db, task_id) == ["task_created"]
            appended = answers.count(200) + (claim.status_code == 200) + len(acked)
            assert counts(db)["events"] == before["events"] + appended

            assert_reads_work(app_server, user, starting[0])
            assert query(db, "SELECT count(*) FROM idempotency_outcomes")[0][0] == 0
            assert_log_sound(db)

        # The condition clears: the same request, retried with its Idempotency-Key, goes through.
        retried = user.post("/task/parse", json={"file": big}, headers={"Idempotency-Key": "big"})
        assert retried.status_code == 200, retried.text
        assert user.get(f"/task/{retried.json()['task_id']}/input").content == base64.b64decode(big)
        left = [t for t in starting if user.get(f"/task/{t}").json()["status"] == "Starting"]
        for task_id in left[:1] + [user.post("/task/parse", json={"file": FILE}).json()["task_id"]]:
            assert user.get(f"/task/{task_id}/cancel").status_code == 200
    assert_log_sound(db)


def test_a_batch_hit_by_a_full_database_is_undone_as_a_whole(tmp_path):
    """SQLite rolls the whole transaction back on SQLITE_FULL. In a group-commit batch, the
    commands before the failing one (already run) and after it must all be refused: none may be
    reported done, and none may be committed on its own."""
    store = Store(tmp_path / "ledger.db")
    try:

        def create(data: bytes) -> Request:
            now = datetime.now(UTC)
            command = CreateTask(
                task_id=new_id(), at=now, owner="alice", configuration={}, file=blob_ref(data)
            )
            envelope = Envelope(recorded_at=now, actor=Actor(key_id="k", role="user"))
            return Request(command=command, envelope=envelope, blobs=(data,))

        assert not isinstance(store.handler.execute_batch([create(b"warm up")])[0], Exception)
        batch = [create(b"small one"), create(os.urandom(256 * 1024)), create(b"small two")]
        with max_pages(store.log, None):
            before = counts(store.path, TABLES[:-1])
            results = store.handler.execute_batch(batch)
            assert all(isinstance(r, StorageUnavailable) for r in results), results
            assert all(MESSAGE in r.message for r in results)
            assert counts(store.path, TABLES[:-1]) == before
        # Lifted: the very same batch goes through.
        results = store.handler.execute_batch(batch)
        assert not any(isinstance(r, BaseException) for r in results), results
        for request in batch:
            assert event_types(store.path, request.command.task_id) == ["task_created"]
    finally:
        store.close()
    assert_log_sound(tmp_path / "ledger.db")


@contextmanager
def immutable(*paths):
    """``chattr +i`` on ``paths`` (skip the test where the file system cannot), then ``-i``."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed (e2fsprogs)")
    names = [str(p) for p in paths]
    result = subprocess.run(["chattr", "+i", *names], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        subprocess.run(["chattr", "-i", *names], capture_output=True, check=False)
        pytest.skip(f"chattr +i is not possible here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *names], check=True)


def test_a_file_that_cannot_be_written_answers_503_keeps_reads_and_recovers(app_server):
    db = app_server.service.store.path
    alice, worker = add_key(db, "alice"), add_key(db, "pool", "worker")
    with app_server.client(alice) as user, app_server.client(worker) as w:
        first, second, cancelled = (
            user.post("/task/parse", json={"file": FILE}).json()["task_id"] for _ in range(3)
        )
        assert user.get(f"/task/{cancelled}/cancel").status_code == 200
        before = counts(db)
        with immutable(db, f"{db}-wal"):
            reason = "disk I/O error"
            assert_unavailable(user.post("/task/parse", json={"file": FILE}), reason)
            assert_unavailable(user.get(f"/task/{first}/cancel"), reason)
            assert_unavailable(user.delete(f"/task/{cancelled}"), reason)
            assert_unavailable(w.post("/worker/claim", json={"worker_id": "w1"}), reason)
            assert counts(db) == before
            assert_reads_work(app_server, user, first)
            assert user.get(f"/task/{first}").json()["status"] == "Starting"
            assert user.get(f"/task/{cancelled}").json()["status"] == "Cancelled"
        # Writable again: the same requests go through.
        assert user.get(f"/task/{first}/cancel").status_code == 200
        assert user.delete(f"/task/{cancelled}").status_code == 200
        claim = w.post("/worker/claim", json={"worker_id": "w1"})
        assert (claim.status_code, claim.json()["task_id"]) == (200, second)
        assert user.post("/task/parse", json={"file": FILE}).status_code == 200
    assert_log_sound(db)


def test_sqlite_read_only_state_answers_503_and_recovers(app_server):
    db, log = app_server.service.store.path, app_server.service.store.log
    alice = add_key(db, "alice")
    with app_server.client(alice) as user:
        task_id = user.post("/task/parse", json={"file": FILE}).json()["task_id"]
        before = counts(db)
        writable = log._writer
        read_only = sqlite3.connect(
            f"file:{db}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        with log._write_lock:
            log._writer = read_only
        try:
            reason = "attempt to write a readonly database"
            assert_unavailable(user.post("/task/parse", json={"file": FILE}), reason)
            assert_unavailable(user.get(f"/task/{task_id}/cancel"), reason)
            assert counts(db) == before
            assert_reads_work(app_server, user, task_id)
        finally:
            with log._write_lock:
                log._writer = writable
            read_only.close()
        assert user.get(f"/task/{task_id}/cancel").status_code == 200
    assert_log_sound(db)


def assert_not_ready(server: InProcessServer, reason: str) -> None:
    response = httpx.get(f"{server.url}/ready")  # no key: readiness is public, as /health is
    assert_unavailable(response, reason)
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness: still alive


def test_ready_is_503_while_the_database_is_full_or_read_only_and_200_again_after(app_server):
    db, log = app_server.service.store.path, app_server.service.store.log
    response = httpx.get(f"{app_server.url}/ready")
    assert (response.status_code, response.text) == (200, "Ready")
    before = counts(db)
    with max_pages(log, None):
        assert_not_ready(app_server, "database or disk is full")
    assert httpx.get(f"{app_server.url}/ready").status_code == 200

    writable = log._writer
    read_only = sqlite3.connect(
        f"file:{db}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    with log._write_lock:
        log._writer = read_only
    try:
        assert_not_ready(app_server, "attempt to write a readonly database")
    finally:
        with log._write_lock:
            log._writer = writable
        read_only.close()
    assert httpx.get(f"{app_server.url}/ready").status_code == 200
    # The probes wrote nothing.
    assert counts(db) == before
    assert query(db, "SELECT count(*) FROM sqlite_master WHERE name = 'ready_probe'")[0][0] == 0
