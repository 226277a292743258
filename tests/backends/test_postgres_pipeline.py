"""PostgreSQL only: a write transaction runs in psycopg's pipeline mode, where a statement whose
answer is not read is sent ahead and its error surfaces later. These pin down that such an error
is never lost: a transaction the database rolled back is not reported committed, and in a
group-commit batch the command whose write failed is the one that fails."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from api.composition import Store
from ledger.commands import CreateTask
from ledger.errors import TransactionRolledBack
from ledger.events import blob_ref
from ledger.handler import CommandHandler, Outcome, Request
from ledger.log import Actor, Envelope
from tests.pg import SESSION, needs_postgres, new_ledger_url

pytestmark = needs_postgres

DATA = b"pipeline test input"


@pytest.fixture
def store():
    url = new_ledger_url()
    s = Store(url)
    yield s
    s.close()
    SESSION.drop_schema(url)


def create(task_id: str) -> Request:
    return Request(
        command=CreateTask(
            task_id=task_id,
            at=datetime(2026, 1, 1, tzinfo=UTC),
            owner="alice",
            configuration={},
            file=blob_ref(DATA),
        ),
        envelope=Envelope(
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC), actor=Actor(key_id="k", role="user")
        ),
        blobs=(DATA,),
    )


def test_a_transaction_with_a_failed_statement_is_not_reported_committed(store):
    with pytest.raises(TransactionRolledBack):
        with store.log.transaction() as tx:
            store.handler.execute(create("a").command, create("a").envelope, blobs=[DATA])
            try:
                tx.execute("SELECT 1 / 0").fetchone()
            except psycopg.Error:
                pass  # swallowed: the database has rolled the transaction back all the same
    assert store.log.last_position() == 0
    assert store.state("a") is None


class FailingWrite:
    """A projection whose write for one task fails, sent ahead without reading its answer (as
    the real projections' writes are)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def apply(self, tx, before, after, recorded) -> None:  # type: ignore[no-untyped-def]
        if after.task_id == self.task_id:
            tx.execute("INSERT INTO no_such_table VALUES (1)")


def test_a_write_that_fails_after_being_sent_ahead_fails_its_own_command_only(store):
    ids = [str(uuid.uuid4()) for _ in range(4)]
    handler = CommandHandler(
        store.log,
        store.tasks,
        [store.tasks, store.queue, store.checkpoints, store.feed, FailingWrite(ids[1])],
    )
    with store.log.write_turn():
        results = handler.execute_batch([create(i) for i in ids])
    assert isinstance(results[1], psycopg.errors.UndefinedTable)
    for n in (0, 2, 3):
        assert isinstance(results[n], Outcome), results[n]
    assert store.state(ids[1]) is None
    assert [store.state(ids[n]) is not None for n in (0, 2, 3)] == [True] * 3
    assert store.log.last_position() == 3
