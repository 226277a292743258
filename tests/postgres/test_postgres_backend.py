"""What the PostgreSQL backend promises beyond the backend contract suite (tests/backends runs
that on both backends): the database itself refuses to rewrite the log, the schema is versioned,
positions are commit-ordered for a reader following the log while several instances write,
ledgers in two schemas of one database stay apart, and a lost connection is a 503-kind error
the next transaction recovers from."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from ledger.errors import SchemaTooNew, StorageUnavailable
from ledger.log import Actor, Envelope, stream_id_for
from ledger.postgres import SCHEMA_VERSION, PostgresBackend
from ledger.postgres.connection import with_options
from ledger.postgres.transfer import TABLES
from tests.backends.backend_support import created, populate
from tests.pg import SESSION, needs_postgres

pytestmark = needs_postgres


@pytest.fixture
def url():
    made = SESSION.new_ledger_url()
    yield made
    SESSION.drop_schema(made)


@pytest.fixture
def backend(url):
    opened = PostgresBackend(url)
    yield opened
    opened.close()


def sql(url: str, statement: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}' WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
        "TRUNCATE events",
    ],
)
def test_the_database_refuses_to_rewrite_the_log(backend, url, statement):
    populate(backend)
    before = sql(url, "SELECT position, data, hash FROM events ORDER BY position")

    with pytest.raises(psycopg.errors.RestrictViolation, match="events are append-only"):
        sql(url, statement)

    assert sql(url, "SELECT position, data, hash FROM events ORDER BY position") == before


def test_the_schema_version_is_recorded_and_a_newer_one_is_refused(backend, url):
    assert sql(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    backend.close()
    sql(url, "UPDATE schema_version SET version = %s", SCHEMA_VERSION + 1)

    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1}, newer than"):
        PostgresBackend(url)


WEBHOOK_TABLES = (
    "webhooks",
    "webhook_secrets",
    "webhook_deliveries",
    "webhook_attempts",
    "webhook_health",
)


def tables(url: str) -> set[str]:
    rows = sql(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    return {row[0] for row in rows}


def test_a_database_of_schema_version_1_is_upgraded_when_opened(backend, url):
    populate(backend)
    recorded = backend.log.read_all()
    backend.close()
    # what taskledger wrote before webhooks: version 1, no webhook tables
    for table in WEBHOOK_TABLES:
        sql(url, f"DROP TABLE {table}")
    sql(url, "UPDATE schema_version SET version = 1")

    upgraded = PostgresBackend(url)
    try:
        assert sql(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        assert set(WEBHOOK_TABLES) <= tables(url)
        assert upgraded.log.read_all() == recorded
        with upgraded.log.transaction() as tx:
            assert upgraded.webhooks.count_failure(tx, "wh1", True) == 1
    finally:
        upgraded.close()


def test_a_backup_copies_every_table(backend, url):
    """``transfer.TABLES`` names each table of the schema (a table added to the schema and not
    to the backup would be left out of every backup)."""
    assert tables(url) - {"schema_version"} == set(TABLES)


def test_the_write_connection_commits_synchronously_whatever_the_default(url):
    # A connection default that would acknowledge commits before they are flushed.
    lax = with_options(url, "-c synchronous_commit=off")
    with psycopg.connect(lax, autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    backend = PostgresBackend(lax)
    try:
        with backend.log.transaction() as tx:
            assert tx.execute("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        backend.close()


def test_opening_an_existing_ledger_keeps_it(backend, url):
    recorded = populate(backend)
    again = PostgresBackend(url)
    try:
        assert again.log.read_all() == recorded
    finally:
        again.close()


def test_two_schemas_in_one_database_are_two_ledgers(backend):
    other_url = SESSION.new_ledger_url()
    other = PostgresBackend(other_url)
    try:
        populate(backend)
        assert other.log.last_position() == 0
        assert other.log.channel != backend.log.channel
        assert other.log.lock_id != backend.log.lock_id
    finally:
        other.close()
        SESSION.drop_schema(other_url)


def test_a_follower_never_skips_an_event_while_instances_write_at_once(url):
    """Four instances (as four nodes would) append concurrently; a reader pages through the
    log by position the whole time. Had a lower position ever committed after a higher one was
    visible, the follower would have passed it by: it must see every event, in order, once."""
    writers = [PostgresBackend(url) for _ in range(4)]
    reader = PostgresBackend(url)
    per_writer, done = 40, threading.Event()
    errors: list[BaseException] = []

    def write(number: int, backend: PostgresBackend) -> None:
        try:
            for i in range(per_writer):
                task_id = f"w{number}-{i}"
                envelope = Envelope(
                    recorded_at=created(task_id).at, actor=Actor(key_id=None, role="user")
                )
                backend.log.append(stream_id_for(task_id), 0, [created(task_id)], envelope)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    seen: list[int] = []

    def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = reader.log.read_all(after=cursor, limit=50)
            seen.extend(e.position for e in page)
            if page:
                cursor = page[-1].position
            elif finished:
                return
            else:
                time.sleep(0.001)

    threads = [threading.Thread(target=write, args=(n, b)) for n, b in enumerate(writers)]
    follower = threading.Thread(target=follow)
    try:
        follower.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        done.set()
        follower.join(60)
        assert errors == []
        total = per_writer * len(writers)
        assert seen == list(range(1, total + 1))
    finally:
        for backend in (*writers, reader):
            backend.close()


def test_a_lost_write_connection_is_storage_unavailable_then_recovers(backend, url):
    recorded = populate(backend)
    (pid,) = backend.log.fetchone("SELECT pg_backend_pid()", tx=backend.log._connect_writer())
    sql(url, "SELECT pg_terminate_backend(%s)", pid)

    with pytest.raises(StorageUnavailable):
        with backend.log.transaction() as tx:
            tx.execute("SELECT 1")
    # The next transaction opens a new connection.
    envelope = Envelope(recorded_at=created("z").at, actor=Actor(key_id=None, role="user"))
    (event,) = backend.log.append(stream_id_for("z"), 0, [created("z")], envelope)
    assert event.position == recorded[-1].position + 1
    assert [e.position for e in backend.log.read_all()] == list(range(1, event.position + 1))


def test_notify_reaches_a_listener_on_another_instance(backend, url):
    other = PostgresBackend(url)
    heard = threading.Event()
    stop = other.log.listen(heard.set)
    try:
        time.sleep(0.3)  # the listener's LISTEN is in place
        envelope = Envelope(recorded_at=created("n").at, actor=Actor(key_id=None, role="user"))
        backend.log.append(stream_id_for("n"), 0, [created("n")], envelope)
        assert heard.wait(5), "no notification within 5 s"
    finally:
        stop()
        other.close()
