"""The SQLite event log: append-only in the database itself, envelopes that round-trip,
paging, content-addressed blobs, and the durability pragmas."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest
from stories import (
    FILE,
    FILE_BYTES,
    at,
    blob,
    cancelled,
    claimed,
    created,
    envelope,
    new_id,
    succeeded,
)

from ledger.commands import CancelTask, ClaimTask, CompleteTask, CreateTask, DeleteTask, ExpireTask
from ledger.errors import TaskAlreadyExists
from ledger.events import Cancelled, Deleted, Expired, TaskCreated
from ledger.log import SYSTEM, Actor, Envelope, RecordedEvent, stream_id_for
from ledger.sqlite.log import SqliteLog


@pytest.fixture
def log(tmp_path):
    log = SqliteLog(tmp_path / "log.db")
    yield log
    log.close()


def run(store, command, blobs=()):
    return store.handler.execute(command, envelope(command.at), blobs=blobs)


def create(store, task_id, data=FILE_BYTES, t=0, expires_in=None):
    return run(
        store,
        CreateTask(
            task_id=task_id,
            at=at(t),
            owner="alice",
            configuration={},
            file=blob(data),
            expires_in=expires_in,
        ),
        blobs=[data],
    )


def all_rows(path):
    with sqlite3.connect(path) as raw:
        return raw.execute("SELECT * FROM events ORDER BY position").fetchall()


# -- append-only, enforced by the database --------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE events SET data = '{}'", "events are append-only: UPDATE is not allowed"),
        (
            "UPDATE events SET version = 99 WHERE position = 1",
            "events are append-only: UPDATE is not allowed",
        ),
        (
            "UPDATE events SET stream_id = 'task-other' WHERE position = 2",
            "events are append-only: UPDATE is not allowed",
        ),
        ("DELETE FROM events", "events are append-only: DELETE is not allowed"),
        ("DELETE FROM events WHERE position = 2", "events are append-only: DELETE is not allowed"),
    ],
)
def test_events_cannot_be_changed_or_removed_even_with_raw_sql(store, sql, message):
    task_id = new_id()
    create(store, task_id)
    run(store, CancelTask(task_id=task_id, at=at(1)))
    rows = all_rows(store.path)
    assert len(rows) == 2

    raw = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError) as refused:
            raw.execute(sql)
        assert str(refused.value) == message
        raw.rollback()
    finally:
        raw.close()

    assert all_rows(store.path) == rows
    assert store.state(task_id) == store.replay(task_id)


def copy_of_row(raw, position, **changes):
    """An INSERT of a copy of a stored event row with some columns changed (whatever columns
    the table has), leaving ``position`` to the database."""
    columns = [c[1] for c in raw.execute("PRAGMA table_info(events)") if c[1] != "position"]
    row = dict(
        zip(
            columns,
            raw.execute(
                f"SELECT {', '.join(columns)} FROM events WHERE position = ?", (position,)
            ).fetchone(),
            strict=False,
        )
    )
    row.update(changes)
    sql = (
        f"INSERT INTO events ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    return sql, row


def test_the_database_refuses_a_second_event_with_the_same_stream_version(store):
    task_id = new_id()
    create(store, task_id)
    rows = all_rows(store.path)
    raw = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
            raw.execute(*copy_of_row(raw, 1))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            raw.execute(*copy_of_row(raw, 1, stream_id="task-x", version=0))
        raw.rollback()
    finally:
        raw.close()
    assert all_rows(store.path) == rows


# -- the envelope ---------------------------------------------------------------------------------


def envelopes(recorded):
    """The envelope and event of each recorded event (fields the log may add are left out)."""
    return [
        (
            r.position,
            r.stream_id,
            r.version,
            r.recorded_at,
            r.actor,
            r.request_id,
            r.idempotency_key,
            r.event,
        )
        for r in recorded
    ]


def test_envelope_fields_round_trip(log):
    stream = stream_id_for("t1")
    user = Envelope(
        recorded_at=datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        actor=Actor(key_id="key-42", role="user"),
        request_id="req-abc",
        idempotency_key="idem-1",
    )
    # A sweeper: no key, no request, no idempotency key; recorded in another time zone.
    plus_two = timezone(timedelta(hours=2))
    sweeper = Envelope(recorded_at=datetime(2026, 3, 4, 9, 0, 0, 1, tzinfo=plus_two))

    first = log.append(stream, 0, [created(task_id="t1"), claimed(task_id="t1")], user)
    second = log.append(stream, 2, [cancelled(task_id="t1", t=5)], sweeper)

    expected = [
        RecordedEvent(
            position=1,
            stream_id=stream,
            version=1,
            recorded_at=user.recorded_at,
            actor=Actor(key_id="key-42", role="user"),
            request_id="req-abc",
            idempotency_key="idem-1",
            event=created(task_id="t1"),
        ),
        RecordedEvent(
            position=2,
            stream_id=stream,
            version=2,
            recorded_at=user.recorded_at,
            actor=Actor(key_id="key-42", role="user"),
            request_id="req-abc",
            idempotency_key="idem-1",
            event=claimed(task_id="t1"),
        ),
        RecordedEvent(
            position=3,
            stream_id=stream,
            version=3,
            recorded_at=datetime(2026, 3, 4, 7, 0, 0, 1, tzinfo=UTC),
            actor=SYSTEM,
            request_id=None,
            idempotency_key=None,
            event=cancelled(task_id="t1", t=5),
        ),
    ]
    assert envelopes(first + second) == envelopes(expected)
    assert envelopes(log.read_stream(stream)) == envelopes(expected)
    assert envelopes(log.read_all()) == envelopes(expected)
    stored = log.read_stream(stream)
    assert stored[2].actor == Actor(key_id=None, role="system")
    assert stored[2].recorded_at.utcoffset() == timedelta(0)
    assert stored[0].recorded_at.microsecond == 123456
    assert envelopes(log.read_stream(stream, until_version=2)) == envelopes(expected[:2])
    assert log.read_stream(stream_id_for("nobody")) == []


def test_events_are_stored_as_plain_json_with_their_tag(log):
    log.append(stream_id_for("t1"), 0, [created(task_id="t1")], envelope(idempotency_key="i-9"))
    raw = sqlite3.connect(log.path)
    try:
        row = raw.execute(
            "SELECT type, data, recorded_at, actor_key_id, actor_role, request_id,"
            " idempotency_key FROM events"
        ).fetchone()
    finally:
        raw.close()
    kind, data, recorded_at, key_id, role, request_id, idem = row
    assert kind == "task_created"
    body = json.loads(data)
    assert body["type"] == "task_created"
    assert body["task_id"] == "t1" and body["owner"] == "alice"
    assert body["file"] == {"sha256": FILE.sha256, "size": FILE.size}
    assert recorded_at == "2026-01-01T12:00:00.000000Z"
    assert (key_id, role, request_id, idem) == ("k1", "user", "req-1", "i-9")


def test_events_recorded_through_the_handler_carry_the_callers_envelope(store):
    task_id = new_id()
    store.handler.execute(
        CreateTask(task_id=task_id, at=at(0), owner="alice", configuration={}, file=FILE),
        Envelope(
            recorded_at=at(0.5),
            actor=Actor(key_id="key-7", role="user"),
            request_id="r-1",
            idempotency_key="create-once",
        ),
        blobs=[FILE_BYTES],
    )
    store.handler.execute(
        ClaimTask(task_id=task_id, at=at(1), worker_id="w", lease_until=at(9)),
        Envelope(recorded_at=at(1.5), actor=Actor(key_id="wk", role="worker")),
    )
    first, second = store.log.read_stream(stream_id_for(task_id))
    assert (first.actor, first.request_id, first.idempotency_key, first.recorded_at) == (
        Actor(key_id="key-7", role="user"),
        "r-1",
        "create-once",
        at(0.5),
    )
    assert (second.actor, second.request_id, second.idempotency_key, second.recorded_at) == (
        Actor(key_id="wk", role="worker"),
        None,
        None,
        at(1.5),
    )


# -- reading the whole log -----------------------------------------------------------------------


def test_read_all_pages_by_position(log):
    for n in range(5):
        tid = f"t{n}"
        log.append(
            stream_id_for(tid),
            0,
            [
                created(task_id=tid, t=n),
                claimed(task_id=tid, t=n + 1),
                succeeded(task_id=tid, t=n + 2),
            ],
            envelope(),
        )
        log.append(stream_id_for(tid), 3, [Deleted(task_id=tid, at=at(n + 3))], envelope())
    everything = log.read_all(0, 1000)
    assert [e.position for e in everything] == list(range(1, 21))

    pages, after = [], 0
    while page := log.read_all(after, 7):
        assert len(page) <= 7
        pages.append([e.position for e in page])
        after = page[-1].position
    assert pages == [list(range(1, 8)), list(range(8, 15)), list(range(15, 21))]

    assert [e.position for e in log.read_all(after=3, limit=2)] == [4, 5]
    assert log.read_all(after=20) == []
    assert log.read_all(after=19, limit=5) == everything[19:]
    assert list(log.iter_all(batch=4)) == everything
    assert list(log.iter_all(after=18, batch=1)) == everything[18:]
    assert log.last_position() == 20
    # Global order interleaves streams exactly as they were appended.
    assert [e.stream_id for e in everything[:4]] == [stream_id_for("t0")] * 4


# -- blobs ----------------------------------------------------------------------------------------


def blob_rows(store):
    raw = sqlite3.connect(store.path)
    try:
        return (
            raw.execute("SELECT sha256, size FROM blobs ORDER BY sha256").fetchall(),
            raw.execute(
                "SELECT task_id, sha256 FROM blob_refs ORDER BY task_id, sha256"
            ).fetchall(),
        )
    finally:
        raw.close()


def test_the_same_bytes_are_stored_once(store):
    a, b = sorted([new_id(), new_id()])
    create(store, a)
    create(store, b)
    blobs, refs = blob_rows(store)
    assert blobs == [(FILE.sha256, FILE.size)]
    assert refs == sorted([(a, FILE.sha256), (b, FILE.sha256)])
    assert store.log.get_blob(FILE) == FILE_BYTES
    assert store.log.get_blob(blob(b"never stored")) is None


def test_a_refused_command_stores_no_blob(store):
    task_id = new_id()
    create(store, task_id)
    with pytest.raises(TaskAlreadyExists):
        create(store, task_id, data=b"another file")
    assert store.log.get_blob(blob(b"another file")) is None
    assert blob_rows(store)[0] == [(FILE.sha256, FILE.size)]


def test_deleting_a_task_purges_its_blobs_but_keeps_its_events_and_shared_blobs(store):
    a, b = new_id(), new_id()
    output = b'{"chunks": ["only a has this"]}'
    create(store, a)
    create(store, b)  # the same input file
    run(store, ClaimTask(task_id=a, at=at(1), worker_id="w", lease_until=at(30)))
    run(
        store, CompleteTask(task_id=a, at=at(2), worker_id="w", output=blob(output)), blobs=[output]
    )
    assert store.log.get_blob(blob(output)) == output
    history = store.log.read_stream(stream_id_for(a))

    run(store, DeleteTask(task_id=a, at=at(3)))

    assert store.log.get_blob(blob(output)) is None  # only a referred to it
    assert store.log.get_blob(FILE) == FILE_BYTES  # b still does
    after = store.log.read_stream(stream_id_for(a))
    assert after[:-1] == history  # every event stays for audit ...
    assert after[-1].event == Deleted(task_id=a, at=at(3))
    assert isinstance(after[0].event, TaskCreated) and after[0].event.file == FILE  # ... refs too
    assert blob_rows(store) == ([(FILE.sha256, FILE.size)], [(b, FILE.sha256)])
    assert store.state(a).gone == "deleted" and store.state(a) == store.replay(a)

    run(store, CancelTask(task_id=b, at=at(4)))
    run(store, DeleteTask(task_id=b, at=at(5)))
    assert store.log.get_blob(FILE) is None
    assert blob_rows(store) == ([], [])
    assert [r.event for r in store.log.read_stream(stream_id_for(b))][-2:] == [
        Cancelled(task_id=b, at=at(4)),
        Deleted(task_id=b, at=at(5)),
    ]


def test_expiring_a_task_purges_its_blobs(store):
    task_id = new_id()
    create(store, task_id, expires_in=10)
    run(store, CancelTask(task_id=task_id, at=at(1)))
    assert run(store, ExpireTask(task_id=task_id, at=at(10))).recorded == []
    run(store, ExpireTask(task_id=task_id, at=at(11)))
    assert store.log.get_blob(FILE) is None
    assert [r.event for r in store.log.read_stream(stream_id_for(task_id))][-1] == Expired(
        task_id=task_id, at=at(11)
    )
    assert store.state(task_id).gone == "expired"


# -- pragmas --------------------------------------------------------------------------------------


def test_wal_and_synchronous_full_are_in_effect(store):
    with store.log.transaction() as writer:
        assert writer.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert writer.execute("PRAGMA busy_timeout").fetchone() == (10_000,)
    reader = store.log.reader()
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw = sqlite3.connect(store.path)  # WAL is a property of the file, seen by any connection
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_synchronous_is_configurable_and_checked(tmp_path):
    log = SqliteLog(tmp_path / "default.db")
    try:
        with log.transaction() as writer:
            assert writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL by default
    finally:
        log.close()
    log = SqliteLog(tmp_path / "n.db", synchronous="normal")
    try:
        with log.transaction() as writer:
            assert writer.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        log.close()
    with pytest.raises(ValueError, match="synchronous must be"):
        SqliteLog(tmp_path / "x.db", synchronous="SOMETIMES")
