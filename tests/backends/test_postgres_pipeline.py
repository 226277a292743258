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


def test_batches_decide_alike_on_sqlite_and_postgres(store, tmp_path):
    """The same batches through both backends: the same outcomes and refusals, the same
    states. The batches mix what the PostgreSQL write transaction answers from memory (states
    read ahead for the batch, the claimed head read with its state, states saved earlier in
    the batch) with what it must read: a task created then cancelled, claimed, completed and
    deleted within one batch; a second create of the same id; claims of an empty queue."""
    from ledger.commands import CancelTask, ClaimTask, CompleteTask, DeleteTask

    at = datetime(2026, 1, 1, tzinfo=UTC)
    lease = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    out = blob_ref(b"{}")

    def claim(s: Store) -> Request:
        return Request(
            command=s.claim_source(
                lambda task_id: ClaimTask(task_id=task_id, at=at, worker_id="w", lease_until=lease)
            ),
            envelope=create("x").envelope,
        )

    def request(command: object, blobs: tuple[bytes, ...] = ()) -> Request:
        return Request(command=command, envelope=create("x").envelope, blobs=blobs)

    def batches(s: Store) -> list[list[Request]]:
        return [
            [create("a"), create("b"), request(CancelTask(task_id="a", at=at)), create("a")],
            [claim(s), create("c"), claim(s), claim(s), create("d")],
            [
                request(CompleteTask(task_id="b", at=at, worker_id="w", output=out), (b"{}",)),
                request(CompleteTask(task_id="b", at=at, worker_id="w", output=out), (b"{}",)),
                claim(s),
                request(DeleteTask(task_id="b", at=at)),
                request(CancelTask(task_id="b", at=at)),
                create("e"),
                request(CancelTask(task_id="e", at=at)),
            ],
        ]

    def run(s: Store) -> list[object]:
        seen: list[object] = []
        for batch in batches(s):
            with s.log.write_turn():
                for result in s.handler.execute_batch(batch):
                    if isinstance(result, Outcome):
                        seen.append([type(e.event).__name__ for e in result.recorded])
                    else:
                        seen.append(type(result).__name__)
        states = {t: s.state(t) for t in "abcde"}
        seen.append({t: (st.status, st.version) if st else None for t, st in states.items()})
        return seen

    sqlite = Store(tmp_path / "ledger.db")
    try:
        expected = run(sqlite)
    finally:
        sqlite.close()
    assert run(store) == expected
    assert "ConcurrencyConflict" not in str(expected)
