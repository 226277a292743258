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
from ledger import decider
from ledger.commands import CreateTask
from ledger.decider import initial_state
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


# -- the write-behind buffer (ledger/postgres/behind.py) -------------------------------------
#
# A batch's event rows, projection rows and small blobs are held in memory and written as one
# statement before COMMIT (or before anything reads through the transaction).

AT = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def claim(s: Store) -> Request:
    from ledger.commands import ClaimTask

    return Request(
        command=s.claim_source(
            lambda task_id: ClaimTask(task_id=task_id, at=AT, worker_id="w", lease_until=LEASE)
        ),
        envelope=create("x").envelope,
    )


def run_batch(s: Store, batch: list[Request]) -> list[object]:
    with s.log.write_turn():
        return s.handler.execute_batch(batch)


@pytest.mark.parametrize("front", [64, 1, 2])
def test_a_command_reads_what_earlier_commands_of_its_batch_wrote(store, monkeypatch, front):
    """A claim's queue head includes the tasks enqueued (and leaves out those dequeued) by the
    commands before it in the batch, though none of their rows has reached the database before
    the claim asks; a task created and deleted in one batch leaves only its tombstone. The
    claims take their heads from one read of the stored queue's front and the changes held
    since (read again when every row read has left it: ``front``)."""
    from ledger.postgres import views

    monkeypatch.setattr(views, "QUEUE_FRONT", front)
    # Stored before the batch: the front its claims read.
    assert all(isinstance(r, Outcome) for r in run_batch(store, [create("q1"), create("q2")]))
    from ledger.commands import CancelTask, DeleteTask
    from ledger.handler import NothingToDo
    from projections import audit

    results = run_batch(
        store,
        [
            create("a"),
            create("d"),
            Request(command=CancelTask(task_id="a", at=AT), envelope=create("x").envelope),
            claim(store),
            claim(store),
            claim(store),
            create("b"),
            claim(store),
            claim(store),
            create("c"),
            Request(command=CancelTask(task_id="c", at=AT), envelope=create("x").envelope),
            Request(command=DeleteTask(task_id="c", at=AT), envelope=create("x").envelope),
            create("e"),
        ],
    )
    assert isinstance(results[8], NothingToDo), results
    others = results[:8] + results[9:]
    assert all(isinstance(r, Outcome) for r in others), results
    claimed = [r.after.task_id for r in results if isinstance(r, Outcome) and r.after.worker_id]
    assert claimed == ["q1", "q2", "d", "b"]
    assert store.views.queue_entries() == [("e", 14)]
    assert [e.position for e in store.views.feed_entries() if e.task_id == "c"] == [13]
    assert audit.verify(store.log, store.views) == []


def test_a_stale_append_found_at_commit_fails_its_own_command_only(store):
    """An append held in the buffer is checked against its stream when the buffer is written
    out: a stale one fails the statement, the batch is rerun with a savepoint per command,
    and only the stale command fails, with ConcurrencyConflict."""
    from ledger.errors import ConcurrencyConflict
    from ledger.log import stream_id_for

    # An event the tasks projection does not know of: the create decides at version 0.
    stray = decider.decide(create("x").command, initial_state("x"))
    store.log.append(stream_id_for("x"), 0, stray, create("x").envelope)
    results = run_batch(store, [create("a"), create("x"), create("b")])
    assert isinstance(results[1], ConcurrencyConflict), results
    assert "task-x is at version 1, not 0" in str(results[1])
    assert isinstance(results[0], Outcome) and isinstance(results[2], Outcome)
    assert [e.stream_id for e in store.log.read_all()] == ["task-x", "task-a", "task-b"]
    assert store.state("x") is None and store.state("a") and store.state("b")
    assert store.views.queue_entries() == [("a", 2), ("b", 3)]


def test_a_stale_append_in_a_transaction_is_a_conflict_at_commit_and_writes_nothing(store):
    from ledger.errors import ConcurrencyConflict
    from ledger.log import stream_id_for

    events = decider.decide(create("a").command, initial_state("a"))
    store.log.append(stream_id_for("a"), 0, events, create("a").envelope)
    with pytest.raises(ConcurrencyConflict):
        with store.log.transaction() as tx:
            store.log.append(stream_id_for("b"), 0, events, create("b").envelope, tx=tx)
            store.log.append(stream_id_for("a"), 0, events, create("a").envelope, tx=tx)
    assert [e.stream_id for e in store.log.read_all()] == ["task-a"]
    # and the log goes on from there
    store.log.append(stream_id_for("b"), 0, events, create("b").envelope)
    assert [e.position for e in store.log.read_all()] == [1, 2]


def test_a_buffer_that_fills_up_is_written_out_early(store, monkeypatch):
    from ledger.postgres import behind
    from projections import audit

    monkeypatch.setattr(behind, "MAX_ROWS", 5)
    ids = [f"t{n:02}" for n in range(20)]
    results = run_batch(store, [create(i) for i in ids] + [claim(store)])
    assert all(isinstance(r, Outcome) for r in results), results
    assert results[-1].after.task_id == "t00"
    assert [t for t, _ in store.views.queue_entries()] == ids[1:]
    assert audit.verify(store.log, store.views) == []


def test_a_large_blob_is_written_at_once_and_a_small_one_with_the_batch(store):
    from ledger.postgres.behind import SMALL_BLOB

    big = b"x" * (SMALL_BLOB + 1)
    with store.log.transaction() as tx:
        store.log.put_blob("a", DATA, tx=tx)
        store.log.put_blob("a", big, tx=tx)
        assert store.log.get_blob(blob_ref(DATA), tx=tx) == DATA
        assert store.log.get_blob(blob_ref(big), tx=tx) == big
    assert store.log.get_blob(blob_ref(DATA)) == DATA
    assert store.log.get_blob(blob_ref(big)) == big


def test_held_blobs_are_written_out_once_they_pass_a_few_mebibytes(store, monkeypatch):
    from ledger.postgres import behind

    monkeypatch.setattr(behind, "MAX_BLOB_BYTES", 100)
    with store.log.transaction() as tx:
        store.log.put_blob("a", b"a" * 60, tx=tx)
        assert store.log.behind(tx)  # held
        store.log.put_blob("a", b"b" * 60, tx=tx)
        assert not store.log.behind(tx)  # 120 bytes held: written out
    assert store.log.get_blob(blob_ref(b"a" * 60)) == b"a" * 60
    assert store.log.get_blob(blob_ref(b"b" * 60)) == b"b" * 60
