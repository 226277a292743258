"""Reverting an update, field by field, through a real SQLite file: cancelling a pending update,
failing it, and timing it out all put the task back exactly as it was before the update."""

from __future__ import annotations

import pytest
from stories import (
    CONFIG,
    FILE,
    FILE_BYTES,
    OUTPUT,
    OUTPUT_BYTES,
    OWNER,
    at,
    blob,
    check_consistent,
    envelope,
    new_id,
)

from ledger.commands import (
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    ExpireLease,
    FailTask,
    UpdateTask,
)
from ledger.errors import InvalidTransition
from ledger.events import Cancelled, Failed, LeaseExpired, TimedOut

REVERTED_FIELDS = (
    "status",
    "message",
    "configuration",
    "output",
    "started_at",
    "finished_at",
    "expires_at",
    "expires_in",
)
PATCH = {"chunk_processing": {"target_length": 7}, "expires_in": 5}


def run(store, command, blobs=()):
    return store.handler.execute(command, envelope(command.at), blobs=blobs)


def fields(state):
    return {name: getattr(state, name) for name in REVERTED_FIELDS}


def finished_task(store, *, fail: bool = False):
    """A task created at t=0, claimed at t=10, then succeeded (or failed) at t=20."""
    task_id = new_id()
    run(
        store,
        CreateTask(
            task_id=task_id,
            at=at(0),
            owner=OWNER,
            configuration=CONFIG,
            file=FILE,
            file_name="doc.pdf",
            expires_in=3600,
        ),
        blobs=[FILE_BYTES],
    )
    run(store, ClaimTask(task_id=task_id, at=at(10), worker_id="w1", lease_until=at(40)))
    if fail:
        run(store, FailTask(task_id=task_id, at=at(20), worker_id="w1", error="first run broke"))
    else:
        run(
            store,
            CompleteTask(task_id=task_id, at=at(20), worker_id="w1", output=OUTPUT),
            blobs=[OUTPUT_BYTES],
        )
    return task_id


def request_update(store, task_id):
    """Update at t=100 and check the pending update really changed the fields it reverts."""
    before = store.state(task_id)
    run(store, UpdateTask(task_id=task_id, at=at(100), configuration=PATCH, owner=OWNER))
    pending = store.state(task_id)
    assert (pending.status, pending.message) == ("Starting", "Task queued for update")
    # the update's chunk_processing replaces the old one whole
    assert pending.configuration["chunk_processing"] == {"target_length": 7}
    assert pending.expires_in == 5 != before.expires_in
    assert pending.prior is not None
    return before


@pytest.mark.parametrize("fail_first", [False, True], ids=["from-Succeeded", "from-Failed"])
def test_cancelling_a_pending_update_restores_every_field(store, fail_first):
    task_id = finished_task(store, fail=fail_first)
    before = request_update(store, task_id)

    outcome = run(store, CancelTask(task_id=task_id, at=at(110), owner=OWNER))

    assert [r.event for r in outcome.recorded] == [Cancelled(task_id=task_id, at=at(110))]
    after = store.state(task_id)
    assert fields(after) == fields(before)
    assert after.status == ("Failed" if fail_first else "Succeeded")
    assert after.message == ("first run broke" if fail_first else "Task succeeded")
    assert after.started_at == at(10) and after.finished_at == at(20)
    assert after.expires_at == at(20 + 3600) and after.expires_in == 3600
    assert after.output == (None if fail_first else OUTPUT)
    assert after.configuration == CONFIG
    assert (after.prior, after.worker_id, after.lease_until) == (None, None, None)
    assert after == store.replay(task_id)
    check_consistent(store)
    # Applied once: the restored task is not Starting, so the same cancel is refused ...
    with pytest.raises(InvalidTransition) as refused:
        run(store, CancelTask(task_id=task_id, at=at(111), owner=OWNER))
    assert refused.value.message == f"Task cannot be cancelled: status is {before.status}"
    # ... and the restored task can be updated again.
    run(store, UpdateTask(task_id=task_id, at=at(120), configuration={"ocr_strategy": "Auto"}))
    assert store.state(task_id).configuration == {**CONFIG, "ocr_strategy": "Auto"}


@pytest.mark.parametrize("fail_first", [False, True], ids=["from-Succeeded", "from-Failed"])
def test_a_failed_update_restores_every_field_and_says_the_update_failed(store, fail_first):
    task_id = finished_task(store, fail=fail_first)
    before = request_update(store, task_id)
    run(store, ClaimTask(task_id=task_id, at=at(101), worker_id="w2", lease_until=at(131)))
    processing = store.state(task_id)
    assert (processing.status, processing.started_at) == ("Processing", at(101))

    outcome = run(store, FailTask(task_id=task_id, at=at(105), worker_id="w2", error="OCR crashed"))

    assert [r.event for r in outcome.recorded] == [
        Failed(task_id=task_id, at=at(105), worker_id="w2", error="OCR crashed")
    ]
    after = store.state(task_id)
    assert after.message == "Task update failed: OCR crashed"
    expected = fields(before) | {"message": "Task update failed: OCR crashed"}
    assert fields(after) == expected
    assert after.status == before.status
    assert after.started_at == at(10) and after.finished_at == at(20)
    assert after.expires_at == at(20 + 3600) and after.expires_in == 3600
    assert (after.prior, after.worker_id, after.lease_until) == (None, None, None)
    assert after == store.replay(task_id)
    check_consistent(store)
    assert store.views.queue_entries() == []


def test_an_update_that_times_out_restores_the_prior_state(store):
    task_id = finished_task(store)
    before = request_update(store, task_id)
    recorded = []
    for attempt in (1, 2, 3):
        t = 100 * (attempt + 1)
        run(store, ClaimTask(task_id=task_id, at=at(t), worker_id="w2", lease_until=at(t + 30)))
        assert store.state(task_id).attempt == attempt
        # Before the lease runs out the sweeper does nothing.
        assert run(store, ExpireLease(task_id=task_id, at=at(t + 29))).recorded == []
        outcome = run(store, ExpireLease(task_id=task_id, at=at(t + 30)))
        recorded = [r.event for r in outcome.recorded]
        if attempt < 3:
            assert recorded == [
                LeaseExpired(task_id=task_id, at=at(t + 30), worker_id="w2", attempt=attempt)
            ]
            pending = store.state(task_id)
            assert (pending.status, pending.prior is not None) == ("Starting", True)

    assert recorded == [
        LeaseExpired(task_id=task_id, at=at(430), worker_id="w2", attempt=3),
        TimedOut(task_id=task_id, at=at(430), attempt=3),
    ]
    after = store.state(task_id)
    assert fields(after) == fields(before) | {"message": "Task update failed: Task timed out"}
    assert after.status == "Succeeded" and after.output == OUTPUT
    assert (after.prior, after.worker_id, after.lease_until) == (None, None, None)
    assert after == store.replay(task_id)
    check_consistent(store)
    assert store.views.queue_entries() == []
    assert run(store, ExpireLease(task_id=task_id, at=at(1000))).recorded == []


def test_cancelling_an_update_requeued_by_a_lease_expiry_still_restores(store):
    task_id = finished_task(store)
    before = request_update(store, task_id)
    run(store, ClaimTask(task_id=task_id, at=at(101), worker_id="w2", lease_until=at(131)))
    run(store, ExpireLease(task_id=task_id, at=at(131)))
    assert store.state(task_id).status == "Starting"
    run(store, CancelTask(task_id=task_id, at=at(140)))
    assert fields(store.state(task_id)) == fields(before)
    check_consistent(store)


def test_a_new_task_cancelled_is_cancelled_not_reverted(store):
    task_id = new_id()
    run(
        store,
        CreateTask(
            task_id=task_id, at=at(0), owner=OWNER, configuration=CONFIG, file=FILE, expires_in=60
        ),
        blobs=[FILE_BYTES],
    )
    run(store, CancelTask(task_id=task_id, at=at(5)))
    after = store.state(task_id)
    assert (after.status, after.message) == ("Cancelled", "Task cancelled")
    assert (after.started_at, after.finished_at, after.expires_at) == (None, at(5), at(65))
    assert after == store.replay(task_id)


def test_a_successful_update_replaces_output_and_clears_prior(store):
    task_id = finished_task(store)
    request_update(store, task_id)
    run(store, ClaimTask(task_id=task_id, at=at(101), worker_id="w2", lease_until=at(131)))
    new_output = b'{"chunks": [1]}'
    run(
        store,
        CompleteTask(task_id=task_id, at=at(102), worker_id="w2", output=blob(new_output)),
        blobs=[new_output],
    )
    after = store.state(task_id)
    assert (after.status, after.output, after.prior) == ("Succeeded", blob(new_output), None)
    assert (after.started_at, after.finished_at) == (at(101), at(102))
    assert (after.expires_in, after.expires_at) == (5, at(107))
    assert after == store.replay(task_id)
    # With no prior any more, a cancel now is refused (no second revert).
    with pytest.raises(InvalidTransition, match="^Task cannot be cancelled: status is Succeeded$"):
        run(store, CancelTask(task_id=task_id, at=at(103)))
