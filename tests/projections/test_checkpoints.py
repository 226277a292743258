"""Checkpoints (``projections.checkpoints``): the state time travel folds on from.

The property: for random histories, written by the real command handler in random batches,
with a random checkpoint interval, the state at every version (a checkpoint folded on) is
exactly the fold of the stream's prefix; ``verify`` finds nothing wrong, and ``rebuild`` writes
the same checkpoints again. Then what ``verify`` reports when a checkpoint is wrong, and what a
database without checkpoints (from before them) answers."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.composition import Store
from ledger.commands import (
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    ExpireLease,
    ExtendLease,
    FailTask,
    ReleaseTask,
    UpdateTask,
)
from ledger.decider import decide, fold, initial_state
from ledger.errors import LedgerError
from ledger.handler import Request
from projections import audit
from projections.checkpoints import CheckpointProjection, due
from tests.conftest import at, blob, envelope

TASK = "0b7c6f2e-5d1a-4c8e-9f3a-2e6d8c4b1a90"
KINDS = ["update", "cancel", "claim", "extend", "release", "complete", "fail", "expire_lease"]


def command(kind: str, t: float):
    """One command of ``kind`` at ``t`` s; the worker is always ``w1`` so that most are allowed."""
    when = at(t)
    return {
        "update": lambda: UpdateTask(task_id=TASK, at=when, configuration={"n": t}),
        "cancel": lambda: CancelTask(task_id=TASK, at=when),
        "claim": lambda: ClaimTask(task_id=TASK, at=when, worker_id="w1", lease_until=at(t + 1)),
        "extend": lambda: ExtendLease(task_id=TASK, at=when, worker_id="w1", lease_until=at(t + 1)),
        "release": lambda: ReleaseTask(task_id=TASK, at=when, worker_id="w1"),
        "complete": lambda: CompleteTask(task_id=TASK, at=when, worker_id="w1", output=blob(b"o")),
        "fail": lambda: FailTask(task_id=TASK, at=when, worker_id="w1", error="no"),
        # Past the lease (every lease here is 1 s): re-queued, or two events (lease_expired and
        # timed_out) on the last attempt, which can step over a checkpoint's version.
        "expire_lease": lambda: ExpireLease(task_id=TASK, at=at(t + 2), max_attempts=2),
    }[kind]()


def history(kinds: list[str]) -> list:
    """The commands of a story (create, then ``kinds``), keeping only those the decider allows,
    so that each one appends."""
    commands = [
        CreateTask(task_id=TASK, at=at(0), owner="alice", configuration={}, file=blob(b"f"))
    ]
    state = fold(decide(commands[0], initial_state(TASK)), initial_state(TASK))
    for n, kind in enumerate(kinds, start=1):
        candidate = command(kind, 3 * n)
        try:
            events = decide(candidate, state)
        except LedgerError:
            continue
        if events:
            commands.append(candidate)
            state = fold(events, state)
    return commands


def write(store: Store, commands: list, cuts: list[int]) -> None:
    """``commands`` through the command handler, one transaction per slice between ``cuts``."""
    bounds = sorted({0, len(commands), *(c % (len(commands) + 1) for c in cuts)})
    for start, end in zip(bounds, bounds[1:], strict=False):
        requests = [
            Request(command=c, envelope=envelope(c.at), blobs=(b"f", b"o"))
            for c in commands[start:end]
        ]
        for result in store.handler.execute_batch(requests):
            assert not isinstance(result, BaseException), repr(result)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(KINDS), max_size=60),
    every=st.integers(1, 7),
    cuts=st.lists(st.integers(0, 100), max_size=6),
)
def test_the_state_from_a_checkpoint_is_the_fold_of_the_prefix(kinds, every, cuts):
    directory = Path(tempfile.mkdtemp(prefix="taskledger-checkpoints-"))
    store = Store(directory / "ledger.db", checkpoint_every=every)
    try:
        write(store, history(kinds), cuts)
        events = [e.event for e in store.history(TASK)]
        checkpoints = list(store.views.stored_checkpoints())
        assert [v for _, v, _ in checkpoints] == list(range(every, len(events) + 1, every))
        assert all(s.version == v and s.task_id == t == TASK for t, v, s in checkpoints)
        for version in range(1, len(events) + 1):
            assert store.state_at(TASK, version) == fold(events[:version]), version
        assert audit.verify(store.log, store.views) == []

        audit.rebuild(store.log, store.views, checkpoint_every=every)
        assert list(store.views.stored_checkpoints()) == checkpoints
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_command_over_a_multiple_keeps_the_state_at_the_multiple(store):
    projection = CheckpointProjection(store.views, every=2)
    outcome = store.handler.execute(history(["claim"])[0], envelope(at(0)), blobs=[b"f"])
    claimed = store.handler.execute(command("claim", 1), envelope(at(1)))
    # Version 2 -> 4 in one command: lease_expired (3) and timed_out (4).
    expired = store.handler.execute(
        ExpireLease(task_id=TASK, at=at(9), max_attempts=1), envelope(at(9))
    )
    assert [r.version for r in expired.recorded] == [3, 4]
    assert due(2, 4, 2) and due(1, 2, 2) and not due(2, 3, 2) and not due(0, 1, 2)
    with store.log.transaction() as tx:
        store.views.clear(tx)
        for done in (outcome, claimed, expired):
            projection.apply(tx, done.before, done.after, done.recorded)
    events = [e.event for e in store.history(TASK)]
    assert list(store.views.stored_checkpoints()) == [
        (TASK, 2, fold(events[:2])),
        (TASK, 4, fold(events[:4])),
    ]


def _sql(store: Store, statement: str, *params) -> None:
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute(statement, params)
    conn.close()


def test_verify_reports_a_checkpoint_that_differs_from_the_fold_or_has_no_event(tmp_path):
    store = Store(tmp_path / "ledger.db", checkpoint_every=2)
    try:
        write(store, history(["claim", "complete", "update", "cancel"]), [])
        assert audit.verify(store.log, store.views) == []
        _sql(
            store,
            "UPDATE checkpoints SET state = replace(state, '\"Processing\"', '\"Failed\"')"
            " WHERE version = 2",
        )
        _sql(
            store,
            "INSERT INTO checkpoints (task_id, version, state) SELECT task_id, 40, state"
            " FROM checkpoints WHERE version = 4",
        )
        found = [(d.kind, d.task_id, d.detail) for d in audit.verify(store.log, store.views)]
        assert [(kind, task) for kind, task, _ in found] == [
            ("checkpoint", TASK),
            ("checkpoint", TASK),
        ]
        assert "checkpoint at version 2 differs from the fold of its events: status" in found[0][2]
        assert found[1][2] == "checkpoint at version 40 without an event at that version"

        audit.rebuild(store.log, store.views, checkpoint_every=2)
        assert audit.verify(store.log, store.views) == []
    finally:
        store.close()


def test_a_database_without_checkpoints_answers_the_same_and_rebuild_writes_them(tmp_path):
    store = Store(tmp_path / "ledger.db", checkpoint_every=3)
    try:
        write(store, history(["claim", "complete", "update", "cancel"] * 3), [])
        events = [e.event for e in store.history(TASK)]
        kept = list(store.views.stored_checkpoints())
        assert kept
        _sql(store, "DELETE FROM checkpoints")
        # A missing checkpoint is no error: the fold starts further back.
        assert audit.verify(store.log, store.views) == []
        for version in range(1, len(events) + 1):
            assert store.state_at(TASK, version) == fold(events[:version])
        audit.rebuild(store.log, store.views, checkpoint_every=3)
        assert list(store.views.stored_checkpoints()) == kept
    finally:
        store.close()
