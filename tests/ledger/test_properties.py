"""Property: whatever commands arrive, in whatever order, on a real SQLite file, the stored
projections always equal a fresh fold of the log, time travel (from checkpoints, kept every few
events here) always equals the fold of the stream's prefix, and the log itself stays well
formed."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from stories import FILE_BYTES, at, blob, check_consistent, envelope

from api.composition import Store
from ledger.commands import (
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    DeleteTask,
    ExpireLease,
    ExpireTask,
    ExtendLease,
    FailTask,
    ReleaseTask,
    UpdateTask,
)
from ledger.decider import fold
from ledger.errors import LedgerError
from ledger.handler import NothingToDo, Request
from ledger.log import stream_id_for

TASKS = [str(uuid.UUID(int=n + 1)) for n in range(4)]
KINDS = [
    "create",
    "update",
    "cancel",
    "delete",
    "claim",
    "extend",
    "release",
    "complete",
    "fail",
    "expire_lease",
    "expire_task",
]
PATCHES = st.sampled_from(
    [
        {},
        {"ocr_strategy": "Auto"},
        {"chunk_processing": {"target_length": 7}},
        {"expires_in": 30},
        {"chunk_processing": None},
    ]
)


@st.composite
def commands(draw, now, store):
    """One command of any kind against one of a few tasks, from any caller. Half the time the
    caller is the one the task would accept (its owner, the worker holding its lease), so that
    stories get past the first refusal."""
    kind = draw(st.sampled_from(KINDS))
    task_id = draw(st.sampled_from(TASKS))
    state = store.state(task_id)
    holder = state.worker_id if state is not None and state.worker_id else "w1"
    worker = draw(st.sampled_from([holder, holder, "w1", "w2"]))
    owner = draw(
        st.sampled_from([None, state.owner if state is not None else None, "alice", "bob"])
    )
    t = at(now)
    lease_until = at(now + draw(st.integers(1, 60)))
    if kind == "create":
        expires_in = draw(st.sampled_from([None, 20, 200]))
        return CreateTask(
            task_id=task_id,
            at=t,
            owner=owner or "alice",
            file=blob(FILE_BYTES),
            configuration={"ocr_strategy": "All"},
            expires_in=expires_in,
        )
    return {
        "update": lambda: UpdateTask(
            task_id=task_id, at=t, configuration=draw(PATCHES), owner=owner
        ),
        "cancel": lambda: CancelTask(task_id=task_id, at=t, owner=owner),
        "delete": lambda: DeleteTask(task_id=task_id, at=t, owner=owner),
        "claim": lambda: ClaimTask(
            task_id=task_id, at=t, worker_id=worker, lease_until=lease_until
        ),
        "extend": lambda: ExtendLease(
            task_id=task_id, at=t, worker_id=worker, lease_until=lease_until
        ),
        "release": lambda: ReleaseTask(task_id=task_id, at=t, worker_id=worker),
        "complete": lambda: CompleteTask(
            task_id=task_id, at=t, worker_id=worker, output=blob(b"out-" + task_id.encode())
        ),
        "fail": lambda: FailTask(task_id=task_id, at=t, worker_id=worker, error="it broke"),
        "expire_lease": lambda: ExpireLease(
            task_id=task_id, at=t, max_attempts=draw(st.integers(1, 3))
        ),
        "expire_task": lambda: ExpireTask(task_id=task_id, at=t),
    }[kind]()


def blobs_for(command) -> list[bytes]:
    if isinstance(command, CreateTask):
        return [FILE_BYTES]
    if isinstance(command, CompleteTask):
        return [b"out-" + command.task_id.encode()]
    return []


class LedgerMachine(RuleBasedStateMachine):
    @initialize(
        created=st.integers(1, len(TASKS) - 1),
        owners=st.lists(
            st.sampled_from(["alice", "bob"]), min_size=len(TASKS), max_size=len(TASKS)
        ),
        every=st.integers(1, 4),
    )
    def open_store(self, created, owners, every):
        """A fresh file, with some tasks created up front (and at least one never created), and
        a checkpoint every ``every`` events (a few, so that stories pass many of them)."""
        self.dir = Path(tempfile.mkdtemp(prefix="taskledger-prop-"))
        self.every = every
        self.store = Store(self.dir / "ledger.db", checkpoint_every=every)
        self.now = 0
        self.log_so_far: list[tuple[int, str, int, str]] = []
        self.reopened = 0
        for task_id, owner in zip(TASKS[:created], owners, strict=False):
            self.run_one(
                CreateTask(
                    task_id=task_id,
                    at=at(0),
                    owner=owner,
                    configuration={},
                    file=blob(FILE_BYTES),
                    expires_in=20,
                )
            )

    def teardown(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def tick(self, seconds: int) -> None:
        self.now += seconds

    def stream_versions(self) -> dict[str, int]:
        return {t: len(self.store.log.read_stream(stream_id_for(t))) for t in TASKS}

    def run_one(self, command):
        versions, last = self.stream_versions(), self.store.log.last_position()
        before = self.store.state(command.task_id)
        try:
            outcome = self.store.handler.execute(
                command, envelope(command.at), blobs=blobs_for(command)
            )
        except LedgerError as refused:
            event(f"{type(command).__name__}: {type(refused).__name__}")
            # Refused: nothing was written, not even a blob or a projection row.
            assert self.stream_versions() == versions
            assert self.store.log.last_position() == last
            assert self.store.state(command.task_id) == before
            return None
        recorded = outcome.recorded
        event(f"{type(command).__name__}: {len(recorded)} event(s)")
        assert [r.version for r in recorded] == [
            versions[command.task_id] + n for n in range(1, len(recorded) + 1)
        ]
        assert [r.position for r in recorded] == [last + n for n in range(1, len(recorded) + 1)]
        assert self.store.state(command.task_id) == (outcome.after if recorded else before)
        return outcome

    @rule(data=st.data(), dt=st.integers(0, 40))
    def command(self, data, dt):
        self.tick(dt)
        self.run_one(data.draw(commands(self.now, self.store)))

    @rule(worker=st.sampled_from(["w1", "w2"]), dt=st.integers(0, 40))
    def claim_the_head_of_the_queue(self, worker, dt):
        self.tick(dt)
        queue = self.store.views.queue_entries()
        source = self.store.claim_source(
            lambda task_id: ClaimTask(
                task_id=task_id, at=at(self.now), worker_id=worker, lease_until=at(self.now + 30)
            )
        )
        try:
            outcome = self.store.handler.execute(source, envelope(at(self.now), role="worker"))
        except NothingToDo:
            event("claim the head: queue empty")
            assert queue == []
            return
        event("claim the head: claimed")
        # FIFO: the task claimed is the one that became claimable first.
        assert outcome.after.task_id == queue[0][0]
        assert outcome.after.status == "Processing"

    @rule(data=st.data(), size=st.integers(1, 4), dt=st.integers(0, 40))
    def run_a_batch_in_one_transaction(self, data, size, dt):
        """Group commit: each command is decided against the state the ones before it left, and
        a refused command does not spoil the others."""
        self.tick(dt)
        batch = [data.draw(commands(self.now, self.store)) for _ in range(size)]
        requests = [
            Request(command=c, envelope=envelope(c.at), blobs=tuple(blobs_for(c))) for c in batch
        ]
        last = self.store.log.last_position()
        results = self.store.handler.execute_batch(requests)
        assert len(results) == size
        appended = [
            r
            for result in results
            if not isinstance(result, BaseException)
            for r in result.recorded
        ]
        assert [r.position for r in appended] == list(range(last + 1, last + 1 + len(appended)))
        for command, result in zip(batch, results, strict=False):
            if isinstance(result, BaseException):
                assert isinstance(result, LedgerError), repr(result)
            elif result.recorded:
                event(f"batched {type(command).__name__}: appended")

    @precondition(lambda self: self.reopened < 3)
    @rule()
    def close_and_reopen(self):
        self.store.close()
        self.store = Store(self.dir / "ledger.db", checkpoint_every=self.every)
        self.reopened += 1

    @invariant()
    def projections_equal_fold_and_the_log_only_grows(self):
        check_consistent(self.store)
        log = [
            (e.position, e.stream_id, e.version, e.recorded_at.isoformat())
            for e in self.store.log.iter_all()
        ]
        # Nothing recorded is ever changed or dropped, and a position is never handed out twice
        # (not even after close and reopen): the old log is a prefix of the new one, and every
        # new position is above every old one.
        assert log[: len(self.log_so_far)] == self.log_so_far
        if self.log_so_far and len(log) > len(self.log_so_far):
            assert log[len(self.log_so_far)][0] > self.log_so_far[-1][0]
        self.log_so_far = log
        for task_id in TASKS:
            assert self.store.state(task_id) == self.store.replay(task_id)

    @invariant()
    def time_travel_equals_the_fold_of_the_prefix(self):
        for task_id in TASKS:
            events = [e.event for e in self.store.history(task_id)]
            for version in range(1, len(events) + 1):
                assert self.store.state_at(task_id, version) == fold(events[:version]), version
            assert self.store.state_at(task_id, len(events) + 1) == (
                fold(events) if events else None
            )


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ledger_state_machine = LedgerMachine.TestCase


def test_positions_are_never_reused_after_reopen(tmp_path):
    """A direct check of AUTOINCREMENT: closing and reopening never rewinds the position."""
    path = tmp_path / "ledger.db"
    seen = []
    for round_ in range(3):
        store = Store(path)
        for n in range(3):
            task_id = str(uuid.UUID(int=round_ * 10 + n + 1))
            outcome = store.handler.execute(
                CreateTask(
                    task_id=task_id,
                    at=at(n),
                    owner="alice",
                    configuration={},
                    file=blob(FILE_BYTES),
                ),
                envelope(at(n)),
            )
            seen.append(outcome.recorded[0].position)
        store.close()
    assert seen == list(range(1, 10))
