"""EventLog contract: transactions, savepoints, the write turn, read snapshots, two instances
on one database, and content-addressed blobs."""

from __future__ import annotations

import threading

import pytest
from backend_support import (
    FILE_BYTES,
    OUTPUT_BYTES,
    append,
    assert_chain,
    at,
    blobs,
    cancelled,
    claimed,
    created,
    env,
    feed_entries,
    positions,
    stored,
    within,
)

from ledger.decider import fold
from ledger.errors import ConcurrencyConflict, DuplicateRecord
from ledger.events import blob_ref
from ledger.log import FeedQuery, StoredOutcome, TaskQuery, stream_id_for

OUTCOME = StoredOutcome(fingerprint="fp-1", outcome=b'{"status": 200}')


def write_everything(backend, tx, task_id, t=0):
    """One of each kind of write a command makes, inside ``tx``."""
    backend.log.put_blob(task_id, f"file of {task_id}".encode(), tx=tx)
    recorded = append(backend, task_id, [created(task_id, t)], tx=tx)
    backend.views.save_task(tx, fold([created(task_id, t)]))
    backend.views.enqueue(tx, task_id, recorded[-1].position)
    backend.views.add_to_feed(tx, feed_entries("alice", recorded))
    backend.records.record_outcome(tx, "k1", f"idem-{task_id}", OUTCOME, "2026-01-01T12:00:00Z")
    return recorded


def assert_nothing_of(backend, task_id):
    assert backend.log.read_stream(stream_id_for(task_id)) == []
    assert backend.log.get_blob(blob_ref(f"file of {task_id}".encode())) is None
    assert all(task_id not in owners for _, _, owners in blobs(backend))
    assert backend.views.load_task(task_id) is None
    assert task_id not in [t for t, _ in backend.views.queue_entries()]
    assert backend.views.feed(FeedQuery(owner="alice", task_id=task_id)) == []
    assert backend.records.find_outcome("k1", f"idem-{task_id}") is None


def assert_all_of(backend, task_id):
    assert len(backend.log.read_stream(stream_id_for(task_id))) == 1
    assert backend.log.get_blob(blob_ref(f"file of {task_id}".encode())) is not None
    assert backend.views.load_task(task_id) is not None
    assert task_id in [t for t, _ in backend.views.queue_entries()]
    assert len(backend.views.feed(FeedQuery(owner="alice", task_id=task_id))) == 1
    assert backend.records.find_outcome("k1", f"idem-{task_id}") == OUTCOME


# -- transactions and savepoints ----------------------------------------------------------------


def test_a_transaction_commits_every_write_in_it(backend, other):
    with backend.log.transaction() as tx:
        write_everything(backend, tx, "a")
    assert_all_of(backend, "a")
    assert_all_of(other, "a")


def test_a_transaction_that_raises_writes_nothing_and_the_error_comes_out(backend):
    with backend.log.transaction() as tx:
        write_everything(backend, tx, "a")
    rows = stored(backend)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with backend.log.transaction() as tx:
            write_everything(backend, tx, "b", t=1)
            append(backend, "a", [claimed("a", 2)], expected=1, tx=tx)
            raise Boom()

    assert_nothing_of(backend, "b")
    assert_all_of(backend, "a")
    assert stored(backend) == rows
    # and the log goes on from where the last commit left it
    append(backend, "c", [created("c", 3)])
    assert_chain(stored(backend))


def test_a_transaction_opened_inside_another_commits_with_it(backend):
    with pytest.raises(RuntimeError):
        with backend.log.transaction() as tx:
            with backend.log.transaction() as inner:
                append(backend, "a", [created("a", 0)], tx=inner)
            assert len(backend.log.read_stream(stream_id_for("a"), tx=tx)) == 1
            raise RuntimeError("the outer one fails")
    assert backend.log.read_stream(stream_id_for("a")) == []


def test_a_savepoint_undoes_only_its_own_writes(backend):
    with backend.log.transaction() as tx:
        before = write_everything(backend, tx, "a")
        with pytest.raises(RuntimeError):
            with backend.log.savepoint(tx, "unit"):
                write_everything(backend, tx, "b", t=1)
                raise RuntimeError("only b")
        with backend.log.savepoint(tx, "unit"):
            after = write_everything(backend, tx, "c", t=2)
    assert_all_of(backend, "a")
    assert_nothing_of(backend, "b")
    assert_all_of(backend, "c")
    assert positions(backend.log.read_all()) == positions(before + after)
    assert_chain(stored(backend))


def test_a_duplicate_record_in_a_savepoint_leaves_the_transaction_usable(backend):
    with backend.log.transaction() as tx:
        backend.records.record_outcome(tx, "k1", "idem", OUTCOME, "2026-01-01T12:00:00Z")
    with backend.log.transaction() as tx:
        append(backend, "a", [created("a", 0)], tx=tx)
        with pytest.raises(DuplicateRecord):
            with backend.log.savepoint(tx, "command"):
                append(backend, "b", [created("b", 1)], tx=tx)
                backend.records.record_outcome(
                    tx, "k1", "idem", StoredOutcome(fingerprint="fp-2", outcome=b"x"), "t"
                )
        append(backend, "c", [created("c", 2)], tx=tx)
    assert [e.stream_id for e in backend.log.read_all()] == ["task-a", "task-c"]
    assert backend.records.find_outcome("k1", "idem") == OUTCOME


# -- the write turn -------------------------------------------------------------------------------


def test_write_turn_lets_its_holder_open_transactions_and_nest(backend):
    def hold():
        with backend.log.write_turn():
            with backend.log.write_turn():
                with backend.log.transaction() as tx:
                    append(backend, "a", [created("a", 0)], tx=tx)
            append(backend, "b", [created("b", 1)])

    within(10, hold)
    assert [e.stream_id for e in backend.log.read_all()] == ["task-a", "task-b"]


def test_another_instance_waits_for_the_write_turn(backend, other):
    started, finished = threading.Event(), threading.Event()
    errors = []

    def write_from_other():
        started.set()
        try:
            append(other, "o", [created("o", 5)])
        except Exception as exc:  # checked below
            errors.append(exc)
        finished.set()

    waiter = threading.Thread(target=write_from_other, daemon=True)
    with backend.log.write_turn():
        waiter.start()
        assert started.wait(5)
        assert not finished.wait(0.3), "the other instance wrote during this one's turn"
        append(backend, "h", [created("h", 0)])  # the holder's own writes don't wait
    assert finished.wait(10)
    waiter.join(5)
    assert errors == []
    assert [e.stream_id for e in backend.log.read_all()] == ["task-h", "task-o"]


# -- two instances on one database --------------------------------------------------------------


@pytest.mark.parametrize("round_", range(5))
def test_two_instances_appending_at_one_version_one_wins(backend, other, round_):
    append(backend, "a", [created("a", 0)])
    barrier = threading.Barrier(2)
    results = {}

    def attempt(name, instance):
        barrier.wait(5)
        try:
            results[name] = append(
                instance, "a", [claimed("a", 1)], expected=1, envelope=env(1, request_id=name)
            )
        except ConcurrencyConflict as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=attempt, args=pair, daemon=True)
        for pair in (("one", backend), ("two", other))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == ["one", "two"]
    winners = [name for name, result in results.items() if isinstance(result, list)]
    losers = [name for name, result in results.items() if isinstance(result, ConcurrencyConflict)]
    assert len(winners) == 1 and len(losers) == 1
    events = backend.log.read_stream(stream_id_for("a"))
    assert [e.version for e in events] == [1, 2]
    assert events[1].request_id == winners[0]
    assert events == other.log.read_stream(stream_id_for("a"))


def test_two_instances_writing_at_once_keep_one_chain_and_unique_positions(backend, other):
    def writer(instance, name):
        for n in range(8):
            append(instance, f"{name}-{n}", [created(f"{name}-{n}", n)])

    threads = [
        threading.Thread(target=writer, args=(instance, f"{name}{k}"), daemon=True)
        for name, instance in (("x", backend), ("y", other))
        for k in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    rows = stored(backend)
    assert len(rows) == 32
    assert positions(rows) == sorted(set(positions(rows)))
    assert_chain(rows)
    assert stored(other) == rows


# -- read snapshots -------------------------------------------------------------------------------


def test_a_read_snapshot_sees_one_moment(backend, other):
    append(backend, "a", [created("a", 0)])
    with backend.log.transaction() as tx:
        backend.views.save_task(tx, fold([created("a", 0)]))
    query = TaskQuery(at=at(10))
    with backend.log.read_snapshot() as snap:
        # A snapshot's moment is fixed by its first read at the latest.
        seen = backend.log.read_stream(stream_id_for("a"), tx=snap)
        append(other, "a", [cancelled("a", 1)], expected=1)
        append(other, "b", [created("b", 2)])
        with other.log.transaction() as tx:
            other.views.save_task(tx, fold([created("b", 2)]))
        assert backend.log.read_stream(stream_id_for("a"), tx=snap) == seen
        assert backend.log.read_stream(stream_id_for("b"), tx=snap) == []
        assert len(list(backend.log.iter_stored(tx=snap))) == 1
        assert [s.task_id for s in backend.views.list_tasks(query, tx=snap)] == ["a"]
        assert len(backend.views.feed(FeedQuery(), tx=snap)) == 1
    assert len(backend.log.read_stream(stream_id_for("a"))) == 2
    assert [s.task_id for s in backend.views.list_tasks(query)] == ["b", "a"]


# -- blobs ----------------------------------------------------------------------------------------


def test_put_blob_is_content_addressed(backend):
    with backend.log.transaction() as tx:
        ref = backend.log.put_blob("a", FILE_BYTES, tx=tx)
        again = backend.log.put_blob("a", FILE_BYTES, tx=tx)
        shared = backend.log.put_blob("b", FILE_BYTES, tx=tx)
    assert ref == again == shared == blob_ref(FILE_BYTES)
    assert blobs(backend) == [(ref.sha256, FILE_BYTES, ["a", "b"])]
    assert backend.log.get_blob(ref) == FILE_BYTES


@pytest.mark.parametrize("data", [b"", b"\x00\xff\x00 binary", bytes(range(256)) * 300])
def test_get_blob_gives_the_bytes_back(backend, data):
    with backend.log.transaction() as tx:
        ref = backend.log.put_blob("a", data, tx=tx)
        assert backend.log.get_blob(ref, tx=tx) == data
    assert backend.log.get_blob(ref) == data
    assert backend.log.get_blob(blob_ref(b"never stored")) is None


def test_purge_blobs_drops_only_what_no_other_task_refers_to(backend):
    with backend.log.transaction() as tx:
        shared = backend.log.put_blob("a", FILE_BYTES, tx=tx)
        own = backend.log.put_blob("a", OUTPUT_BYTES, tx=tx)
        backend.log.put_blob("b", FILE_BYTES, tx=tx)
        append(backend, "a", [created("a", 0)], tx=tx)
    with backend.log.transaction() as tx:
        assert backend.log.purge_blobs("a", tx=tx) == 1
    assert backend.log.get_blob(own) is None
    assert backend.log.get_blob(shared) == FILE_BYTES
    assert blobs(backend) == [(shared.sha256, FILE_BYTES, ["b"])]
    assert len(backend.log.read_stream(stream_id_for("a"))) == 1, "events stay"
    with backend.log.transaction() as tx:
        assert backend.log.purge_blobs("a", tx=tx) == 0
        assert backend.log.purge_blobs("b", tx=tx) == 1
    assert blobs(backend) == []


def test_reads_with_tx_see_the_transactions_own_log_writes(backend, other):
    with backend.log.transaction() as tx:
        ref = backend.log.put_blob("a", FILE_BYTES, tx=tx)
        recorded = append(backend, "a", [created("a", 0)], tx=tx)
        assert backend.log.read_stream(stream_id_for("a"), tx=tx) == recorded
        assert positions(backend.log.iter_stored(tx=tx)) == positions(recorded)
        assert [p for _, p, _ in backend.log.iter_by_stream(tx=tx)] == positions(recorded)
        assert [s for s, _ in backend.log.iter_data(tx=tx)] == ["task-a"]
        assert backend.log.get_blob(ref, tx=tx) == FILE_BYTES
        assert blobs(backend, tx=tx) == [(ref.sha256, FILE_BYTES, ["a"])]
        # not committed yet: another instance sees none of it
        assert other.log.read_stream(stream_id_for("a")) == []
        assert other.log.get_blob(ref) is None
        assert other.log.last_position() == 0
    assert other.log.read_stream(stream_id_for("a")) == recorded


def test_check_writable_passes_on_a_healthy_database_and_writes_nothing(backend, other):
    last = backend.log.last_position()
    backend.log.check_writable()
    other.log.check_writable()
    with backend.log.transaction() as tx:  # the probe left no transaction open
        append(backend, "t", [created("t", 0)], tx=tx)
    assert backend.log.last_position() == last + 1
