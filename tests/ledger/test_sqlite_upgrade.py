"""Opening a database written by the version before the storage port: its ``tasks`` rows get
the ``visible_until`` column (a damaged row does not stop the upgrade), and a retry of a request
whose Idempotency-Key that version recorded is refused, never run again; and the table of the
secret that signs file links is added. Opening one from before the feed projection: the
``feed`` table is made and filled from the log."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest

from api.composition import Store, close_service, open_service
from api.keys import create_key
from api.refusals import IdempotencyMismatch
from api.settings import Settings
from ledger import codec
from ledger.commands import CancelTask, CreateTask, DeleteTask
from ledger.decider import fold
from ledger.log import FeedQuery, TaskQuery
from projections import audit
from tests.ledger.stories import (
    EXPIRES_IN,
    FILE,
    FILE_BYTES,
    OWNER,
    at,
    cancelled,
    created,
    envelope,
    new_id,
)

#: The tables as the earlier version created them (projections/tasks.py, api/idempotency.py).
OLD_SCHEMA = """
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT, lease_until TEXT, gone TEXT,
    version INTEGER NOT NULL, state TEXT NOT NULL
);
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE gone IS NULL AND expires_at IS NOT NULL;
CREATE TABLE idempotency (
    key_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL, media_type TEXT NOT NULL, body BLOB NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (key_id, idempotency_key)
);
"""


def old_database(path, rows):
    conn = sqlite3.connect(str(path))
    conn.executescript(OLD_SCHEMA)
    for task_id, owner, state_json, status, expires_at in rows:
        conn.execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, NULL, NULL, 2, ?)",
            (task_id, owner, status, codec.timestamp(at(0)), expires_at, state_json),
        )
    conn.commit()
    conn.close()


def test_old_task_rows_get_visible_until_and_a_damaged_row_does_not_stop_the_upgrade(tmp_path):
    done = fold([created(), cancelled(t=1)])  # Cancelled, expires EXPIRES_IN after at(1)
    assert done.expires_at == at(1 + EXPIRES_IN)
    db = tmp_path / "old.db"
    old_database(
        db,
        [
            (
                done.task_id,
                OWNER,
                codec.encode_str(done),
                "Cancelled",
                codec.timestamp(done.expires_at),
            ),
            ("damaged", "bob", "{not json", "Succeeded", None),
        ],
    )
    store = Store(db)
    try:
        columns = dict(
            store.log.reader().execute("SELECT task_id, visible_until FROM tasks").fetchall()
        )
        assert columns == {done.task_id: codec.timestamp(done.expires_at), "damaged": None}
        before = TaskQuery(at=done.expires_at - timedelta(seconds=1), owner=OWNER)
        after = TaskQuery(at=done.expires_at, owner=OWNER)
        assert done.task_id in [s.task_id for s in store.views.list_tasks(before)]
        assert done.task_id not in [s.task_id for s in store.views.list_tasks(after)]
        assert store.views.due_expiries(done.expires_at) == [done.task_id]
    finally:
        store.close()
    # Opening it again changes nothing (the migration sees the column and stops).
    Store(db).close()


def test_a_database_from_before_signed_links_gets_its_url_secret_table(tmp_path):
    db = tmp_path / "old.db"
    old_database(db, [])
    store = Store(db)
    try:
        secret = store.records.url_secret()
        assert len(secret) == 32
    finally:
        store.close()
    again = Store(db)
    try:
        assert again.records.url_secret() == secret, "kept across opens"
    finally:
        again.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_key_the_earlier_version_recorded_is_refused_not_run_again(tmp_path):
    db = tmp_path / "old.db"
    old_database(db, [])
    service = open_service(Settings(db_path=db, sweep_interval=0))
    try:
        _, key = create_key(service.store.records, "alice", "user")
        alice = service.authenticate(key)
        conn = sqlite3.connect(str(db))
        conn.execute(
            "INSERT INTO idempotency VALUES (?, 'sent-before', 'f', 200, 'application/json',"
            " x'7b7d', '2026-01-01')",
            (alice.key_id,),
        )
        conn.commit()
        conn.close()
        with pytest.raises(IdempotencyMismatch, match="before this server was upgraded"):
            await service.create(alice, file=b"x", idempotency_key="sent-before")
        assert await service.list_tasks(alice) == []
        # A key the earlier version never saw works as usual.
        made = await service.create(alice, file=b"x", idempotency_key="sent-after")
        assert made == await service.create(alice, file=b"x", idempotency_key="sent-after")
    finally:
        close_service(service)


def test_a_database_from_before_the_feed_gets_it_filled_from_the_log(tmp_path):
    db = tmp_path / "before-feed.db"
    store = Store(db)
    kept, gone, bobs = new_id(), new_id(), new_id()
    try:
        for task_id, owner in ((kept, OWNER), (gone, OWNER), (bobs, "bob")):
            command = CreateTask(
                task_id=task_id, at=at(0), owner=owner, configuration={}, file=FILE
            )
            store.handler.execute(command, envelope(at(0)), blobs=[FILE_BYTES])
        for command in (CancelTask(task_id=kept, at=at(1)), CancelTask(task_id=gone, at=at(1))):
            store.handler.execute(command, envelope(at(1)))
        store.handler.execute(DeleteTask(task_id=gone, at=at(2)), envelope(at(2)))
        written = list(store.views.feed_entries())
    finally:
        store.close()
    # What the earlier version's file looks like: everything but the feed table.
    conn = sqlite3.connect(str(db))
    conn.execute("DROP TABLE feed")
    conn.close()

    store = Store(db)
    try:
        assert list(store.views.feed_entries()) == written
        assert {(e.task_id, e.type) for e in written if e.owner == OWNER} == {
            (kept, "task_created"),
            (kept, "cancelled"),
            (gone, "deleted"),
        }
        mine = store.views.feed(FeedQuery(owner=OWNER))
        assert [e.event.task_id for e in mine] == [kept, kept, gone]
        assert audit.verify(store.log, store.views) == []
    finally:
        store.close()
    Store(db).close()  # opening it again changes nothing
