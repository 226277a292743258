"""The command handler's transaction: a batch commits together, yet each command is its own
unit: one that fails part-way leaves no trace while the others in its batch are kept."""

from __future__ import annotations

import pytest
from stories import at, blob, check_consistent, envelope, new_id

from ledger.commands import CancelTask, ClaimTask, CreateTask
from ledger.errors import InvalidTransition, TaskNotFound
from ledger.handler import NothingToDo, Request
from ledger.log import stream_id_for


class Boom(Exception):
    pass


def create_request(task_id, data, after_append=None):
    return Request(
        command=CreateTask(
            task_id=task_id, at=at(0), owner="alice", configuration={}, file=blob(data)
        ),
        envelope=envelope(at(0)),
        blobs=(data,),
        after_append=after_append,
    )


def test_a_command_failing_after_its_append_is_undone_alone(store):
    a, b, c = new_id(), new_id(), new_id()

    def explode(tx, outcome):
        raise Boom("the idempotency record could not be written")

    results = store.handler.execute_batch(
        [
            create_request(a, b"file a"),
            create_request(b, b"file b", after_append=explode),
            create_request(c, b"file c", after_append=lambda tx, outcome: "kept"),
        ]
    )

    assert isinstance(results[1], Boom)
    assert results[0].after.status == "Starting" and results[0].extra is None
    assert results[2].extra == "kept"
    # b's event, projection row, queue entry and blob are all gone; a and c are committed.
    assert store.log.read_stream(stream_id_for(b)) == []
    assert store.state(b) is None
    assert store.log.get_blob(blob(b"file b")) is None
    assert store.log.get_blob(blob(b"file a")) == b"file a"
    assert [r.position for r in results[0].recorded + results[2].recorded] == [1, 2]
    assert [t for t, _ in store.views.queue_entries()] == [a, c]
    check_consistent(store)


def test_each_command_in_a_batch_sees_the_state_the_previous_ones_left(store):
    task_id = new_id()
    results = store.handler.execute_batch(
        [
            create_request(task_id, b"file"),
            Request(
                command=ClaimTask(task_id=task_id, at=at(1), worker_id="w", lease_until=at(9)),
                envelope=envelope(at(1)),
            ),
            Request(command=CancelTask(task_id=task_id, at=at(2)), envelope=envelope(at(2))),
            Request(command=CancelTask(task_id=new_id(), at=at(2)), envelope=envelope(at(2))),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "Outcome",
        "Outcome",
        "InvalidTransition",
        "TaskNotFound",
    ]
    assert isinstance(results[2], InvalidTransition) and isinstance(results[3], TaskNotFound)
    assert results[2].message == "Task cannot be cancelled: status is Processing"
    assert [r.version for r in store.log.read_stream(stream_id_for(task_id))] == [1, 2]
    assert store.state(task_id).status == "Processing"
    check_consistent(store)


def test_execute_raises_the_refusal_and_writes_nothing(store):
    last = store.log.last_position()
    with pytest.raises(TaskNotFound, match="^Task not found$"):
        store.handler.execute(CancelTask(task_id=new_id(), at=at(0)), envelope())
    assert store.log.last_position() == last


def test_claiming_from_an_empty_queue_is_nothing_to_do(store):
    source = store.claim_source(
        lambda task_id: ClaimTask(task_id=task_id, at=at(0), worker_id="w", lease_until=at(9))
    )
    with pytest.raises(NothingToDo):
        store.handler.execute(source, envelope())
    first, second = new_id(), new_id()
    store.handler.execute_batch([create_request(first, b"1"), create_request(second, b"2")])
    assert store.handler.execute(source, envelope()).after.task_id == first
    assert store.handler.execute(source, envelope()).after.task_id == second
    with pytest.raises(NothingToDo):
        store.handler.execute(source, envelope())
