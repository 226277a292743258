"""Shared vocabulary for the ledger tests: fixed times, ids, event builders, decider stories
(``given(*events).when(command).then(*events)``), and the consistency checks every storage test
ends with.

Kept here rather than imported from ``tests/conftest.py``: pytest swaps ``sys.modules["conftest"]``
whenever it loads another directory's conftest, so ``from conftest import ...`` breaks as soon as
another test package grows its own. This module lives beside the tests that import it.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ledger.decider import decide, fold, initial_state
from ledger.errors import LedgerError
from ledger.events import (
    BlobRef,
    Cancelled,
    Claimed,
    Deleted,
    Expired,
    Failed,
    LeaseExpired,
    Succeeded,
    TaskCreated,
    UpdateRequested,
)
from ledger.log import Actor, Envelope, stream_id_for, task_id_of
from ledger.state import TaskState
from projections.queue import claimable

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ID = "0b7c6f2e-5d1a-4c8e-9f3a-2e6d8c4b1a90"
OWNER = "alice"
WORKER = "w1"
EXPIRES_IN = 3600  # longer than every story, so a task expires only where a test says so
CONFIG = {
    "chunk_processing": {"target_length": 512, "ignore_headers_and_footers": True},
    "ocr_strategy": "All",
}
FILE_BYTES = b"%PDF-1.7 the input file"
OUTPUT_BYTES = b'{"chunks": [], "page_count": 1}'


def at(seconds: float) -> datetime:
    """A fixed point in time, ``seconds`` after T0 (the domain never reads a clock)."""
    return T0 + timedelta(seconds=seconds)


def blob(data: bytes) -> BlobRef:
    return BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


FILE = blob(FILE_BYTES)
OUTPUT = blob(OUTPUT_BYTES)


def envelope(
    when: datetime = T0,
    role: str = "user",
    key_id: str | None = "k1",
    request_id: str | None = "req-1",
    idempotency_key: str | None = None,
) -> Envelope:
    return Envelope(
        recorded_at=when,
        actor=Actor(key_id=key_id, role=role),
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


def new_id() -> str:
    return str(uuid.uuid4())


# -- events, as a story's "given" ---------------------------------------------------------------


def created(task_id: str = ID, t: float = 0, **kw) -> TaskCreated:
    fields = dict(
        owner=OWNER, configuration=CONFIG, file=FILE, file_name="doc.pdf", expires_in=EXPIRES_IN
    )
    fields.update(kw)
    return TaskCreated(task_id=task_id, at=at(t), **fields)


def claimed(
    task_id: str = ID, t: float = 1, worker: str = WORKER, attempt: int = 1, lease: float = 30
) -> Claimed:
    return Claimed(
        task_id=task_id, at=at(t), worker_id=worker, lease_until=at(t + lease), attempt=attempt
    )


def succeeded(
    task_id: str = ID, t: float = 2, worker: str = WORKER, output: BlobRef = OUTPUT
) -> Succeeded:
    return Succeeded(task_id=task_id, at=at(t), worker_id=worker, output=output)


def failed(task_id: str = ID, t: float = 2, worker: str = WORKER, error: str = "boom") -> Failed:
    return Failed(task_id=task_id, at=at(t), worker_id=worker, error=error)


def update_requested(
    task_id: str = ID, t: float = 3, configuration=None, expires_in: int | None = EXPIRES_IN
) -> UpdateRequested:
    return UpdateRequested(
        task_id=task_id, at=at(t), configuration=configuration or CONFIG, expires_in=expires_in
    )


def lease_expired(
    task_id: str = ID,
    t: float = 31,
    worker: str = WORKER,
    attempt: int = 1,
    reason: str = "expired",
) -> LeaseExpired:
    return LeaseExpired(task_id=task_id, at=at(t), worker_id=worker, attempt=attempt, reason=reason)


def cancelled(task_id: str = ID, t: float = 1, reason: str | None = None) -> Cancelled:
    return Cancelled(task_id=task_id, at=at(t), reason=reason)


def deleted(task_id: str = ID, t: float = 4) -> Deleted:
    return Deleted(task_id=task_id, at=at(t))


def expired(task_id: str = ID, t: float = 70) -> Expired:
    return Expired(task_id=task_id, at=at(t))


# -- decider stories: given events, when a command, then events or an error --------------------


class Refused:
    """An expected refusal: the exact error class and the exact message."""

    def __init__(self, error: type[LedgerError], message: str) -> None:
        self.error, self.message = error, message

    def __repr__(self) -> str:
        return f"{self.error.__name__}({self.message!r})"


def outcome(command, state: TaskState):
    """What ``decide`` does: the events, or the error it raised."""
    try:
        return decide(command, state)
    except Exception as exc:
        return exc


def assert_outcome(actual, expected) -> None:
    """``actual`` (events or an error) is ``expected`` (a list of events or a Refused)."""
    if isinstance(expected, Refused):
        assert isinstance(actual, Exception), f"expected {expected!r}, got events {actual!r}"
        assert type(actual) is expected.error, f"expected {expected!r}, got {actual!r}"
        assert actual.message == expected.message
        assert str(actual) == expected.message
    else:
        assert not isinstance(actual, Exception), f"expected {expected!r}, got {actual!r}"
        assert actual == expected


def given(*events) -> Given:
    """A story: the task's history so far (none: a task that was never created)."""
    return Given(list(events))


class Given:
    def __init__(self, events: list) -> None:
        self.events = events

    def when(self, command) -> When:
        return When(fold(self.events, initial_state(command.task_id)), command)


class When:
    def __init__(self, state: TaskState, command) -> None:
        self.state, self.command = state, command

    def then(self, *events, again: list | Refused | None = None) -> TaskState:
        """The command decides exactly ``events``; returns the state they fold to.

        Then the same command is decided again on that state, to check it is not applied twice:
        by default it must decide nothing or be refused (any LedgerError). ``again`` states the
        exact outcome of the repeat instead: a Refused, ``[]``, or the events of a command that
        may repeat (a heartbeat extends the lease again)."""
        assert_outcome(outcome(self.command, self.state), list(events))
        after = fold(events, self.state)
        assert after.version == self.state.version + len(events)
        repeat = outcome(self.command, after)
        if again is None:
            assert repeat == [] or isinstance(repeat, LedgerError), (
                f"{self.command!r} decided again on its own result: {repeat!r}"
            )
        else:
            assert_outcome(repeat, again)
        return after

    def then_raises(self, error: type[LedgerError], message: str) -> None:
        """The command is refused with exactly this error class and message."""
        with pytest.raises(LedgerError) as info:
            decide(self.command, self.state)
        assert_outcome(info.value, Refused(error, message))


# -- storage checks -----------------------------------------------------------------------------


def check_consistent(store) -> dict[str, list]:
    """Every invariant of the log and its inline projections, checked from the database alone.

    * positions strictly increase over the whole log;
    * each stream's versions run 1, 2, ... n with no gap, in position order;
    * each stream has a ``tasks`` row equal to ``fold`` of its events (and no row lacks a stream);
    * the queue holds exactly the live Starting tasks, ordered by the position of the event that
      made each claimable;
    * every checkpoint is the fold of its stream's prefix, one at each multiple of the interval.

    Returns the events per stream for further checks.
    """
    events = list(store.log.iter_all(batch=97))
    positions = [e.position for e in events]
    assert positions == sorted(set(positions)), "positions must strictly increase"
    streams: dict[str, list] = {}
    for e in events:
        streams.setdefault(e.stream_id, []).append(e)
    expected_queue = []
    for stream_id, recorded in streams.items():
        task_id = task_id_of(stream_id)
        assert [e.version for e in recorded] == list(range(1, len(recorded) + 1)), stream_id
        assert all(e.event.task_id == task_id for e in recorded)
        folded = fold(e.event for e in recorded)
        assert store.state(task_id) == folded, f"projection row differs from fold for {task_id}"
        assert store.replay(task_id) == folded
        # Walk the stream one event at a time: where did the task last become claimable?
        state, entered = None, None
        for e in recorded:
            before = state
            state = fold([e.event], state)
            if claimable(state):
                if before is None or not claimable(before):
                    entered = e.position
            else:
                entered = None
        if entered is not None:
            expected_queue.append((task_id, entered))
    # Each checkpoint is the fold of its stream's first ``version`` events, and every multiple
    # of the store's interval has one.
    every = store.checkpoints.every
    checkpoints = {(t, v): c for t, v, c in store.views.stored_checkpoints()}
    expected_checkpoints = {
        (task_id_of(stream_id), n)
        for stream_id, recorded in streams.items()
        for n in range(every, len(recorded) + 1, every)
    }
    assert set(checkpoints) == expected_checkpoints
    for (task_id, version), checkpoint in checkpoints.items():
        recorded = streams[stream_id_for(task_id)][:version]
        assert checkpoint == fold(e.event for e in recorded), (task_id, version)
    rows = sorted(task_id for task_id, _ in store.views.stored_states())
    assert sorted(rows) == sorted(task_id_of(s) for s in streams), "a tasks row without events"
    expected_queue.sort(key=lambda entry: entry[1])
    assert store.views.queue_entries() == expected_queue
    return streams
