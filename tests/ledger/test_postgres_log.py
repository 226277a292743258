"""What only the PostgreSQL log does: ``listen`` hears the commits of other logs on the same
ledger (other processes, other nodes) through LISTEN/NOTIFY, and never the listening log's own
(its writer reports those to the service's watch; a notification of them would race that report
and pass them off as someone else's, waking every waiting reader)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ledger.events import TaskCreated
from ledger.log import Actor, Envelope, stream_id_for
from ledger.postgres import PostgresBackend
from tests.conftest import T0, blob
from tests.pg import SESSION, needs_postgres

pytestmark = needs_postgres


def create(backend: PostgresBackend, task_id: str) -> None:
    event = TaskCreated(
        task_id=task_id,
        at=T0,
        owner="alice",
        configuration={},
        file=blob(b"file"),
        file_name="a.txt",
        expires_in=None,
    )
    envelope = Envelope(recorded_at=T0, actor=Actor(key_id="k1", role="user"))
    backend.log.append(stream_id_for(task_id), 0, [event], envelope)


@pytest.fixture
def two() -> Iterator[tuple[PostgresBackend, PostgresBackend]]:
    """Two logs on one ledger, as two processes would open it."""
    url = SESSION.new_ledger_url()
    mine, theirs = PostgresBackend(url), PostgresBackend(url)
    try:
        yield mine, theirs
    finally:
        theirs.close()
        mine.close()
        SESSION.drop_schema(url)


def test_listen_hears_other_logs_commits_and_never_its_own(two):
    mine, theirs = two
    heard = threading.Semaphore(0)
    stop = mine.log.listen(heard.release)
    try:
        # The listener connects on a thread of its own: another log's commits are heard once it
        # listens (each one is, at once).
        deadline = time.monotonic() + 10
        count = 0
        while not heard.acquire(timeout=0.2):
            assert time.monotonic() < deadline, "another log's commits were never heard"
            create(theirs, f"theirs-{count}")
            count += 1
        while heard.acquire(timeout=0.5):  # what the commits before it was heard still send
            pass

        for n in range(5):
            create(mine, f"mine-{n}")
        assert not heard.acquire(timeout=1.0), "the log heard its own commit"

        create(theirs, "theirs-again")
        assert heard.acquire(timeout=5), "another log's commit after its own was not heard"
    finally:
        stop()
