"""The ``tasks`` projection's read side: listing (newest first, per owner, without tombstones or
expired tasks) and the sweepers' due lists, over rows written by the real command handler."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from ledger.commands import (
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    DeleteTask,
    ExtendLease,
)
from ledger.events import BlobRef
from ledger.log import Actor, Envelope, TaskQuery

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
FILE = BlobRef(sha256=hashlib.sha256(b"f").hexdigest(), size=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(store, command):
    return store.handler.execute(
        command, Envelope(recorded_at=command.at, actor=Actor(key_id="k", role="user"))
    )


def create(store, task_id, t, owner="alice", expires_in=None):
    run(
        store,
        CreateTask(
            task_id=task_id,
            at=at(t),
            owner=owner,
            configuration={},
            file=FILE,
            expires_in=expires_in,
        ),
    )


def ids(states):
    return [s.task_id for s in states]


def test_list_is_newest_first_per_owner_and_skips_deleted_and_expired(store):
    create(store, "a1", 1)
    create(store, "b1", 2, owner="bob")
    create(store, "a2", 3, expires_in=10)
    create(store, "a3", 4)
    create(store, "a4", 5)
    run(store, CancelTask(task_id="a2", at=at(6)))  # expires_at = at(16)
    run(store, CancelTask(task_id="a4", at=at(6)))
    run(store, DeleteTask(task_id="a4", at=at(7)))

    def list_(**query):
        return store.views.list_tasks(TaskQuery(at=query.pop("now"), **query))

    assert ids(list_(owner="alice", now=at(10))) == ["a3", "a2", "a1"]
    assert ids(list_(owner="alice", now=at(16))) == ["a3", "a1"]  # a2 expired by now
    assert ids(list_(owner="bob", now=at(10))) == ["b1"]
    assert ids(list_(owner=None, now=at(10))) == ["a3", "a2", "b1", "a1"]
    assert ids(list_(owner="alice", now=at(10), limit=2)) == ["a3", "a2"]
    assert ids(list_(owner="alice", now=at(10), limit=2, offset=2)) == ["a1"]
    assert ids(list_(owner=None, now=at(10), start=at(2), end=at(3))) == ["a2", "b1"]
    assert ids(list_(owner="carol", now=at(10))) == []


def test_due_leases_and_due_expiries(store):
    for n, task_id in enumerate(["p1", "p2", "s1", "q1"]):
        create(store, task_id, n, expires_in=100)
    run(store, ClaimTask(task_id="p1", at=at(10), worker_id="w", lease_until=at(40)))
    run(store, ClaimTask(task_id="p2", at=at(10), worker_id="w", lease_until=at(30)))
    run(store, ClaimTask(task_id="s1", at=at(10), worker_id="w", lease_until=at(20)))
    run(store, CompleteTask(task_id="s1", at=at(11), worker_id="w", output=FILE))

    # Ordered by lease end; a finished task holds no lease; a Starting one never had one.
    assert store.views.due_leases(at(29)) == []
    assert store.views.due_leases(at(30)) == ["p2"]
    assert store.views.due_leases(at(50)) == ["p2", "p1"]
    assert store.views.due_leases(at(50), limit=1) == ["p2"]
    run(store, ExtendLease(task_id="p2", at=at(25), worker_id="w", lease_until=at(60)))
    assert store.views.due_leases(at(50)) == ["p1"]

    # Only terminal tasks expire, from their finish time.
    assert store.views.due_expiries(at(110)) == []
    assert store.views.due_expiries(at(111)) == ["s1"]
    assert store.views.due_expiries(at(10_000)) == ["s1"]
    run(store, DeleteTask(task_id="s1", at=at(110)))  # before it expires: then it is gone
    assert store.views.due_expiries(at(10_000)) == []
    assert sorted(t for t, _ in store.views.stored_states()) == ["p1", "p2", "q1", "s1"]
