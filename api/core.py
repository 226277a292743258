"""The core of the application service: what every use case shares (see ``api.service``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from api import idempotency
from api.groupcommit import Writer
from api.keys import Gate
from api.policy import Caller, UseCase
from api.readpool import ReadPool
from api.refusals import IdempotencyMismatch
from api.settings import Settings
from ledger.commands import AnyCommand
from ledger.errors import DuplicateRecord
from ledger.handler import CommandSource, Outcome, Request
from ledger.log import Actor, Envelope, StoredOutcome
from ledger.state import TaskState
from projections.queue import claimable

if TYPE_CHECKING:
    from api.composition import Store
    from api.fetch import Fetcher

R = TypeVar("R")

#: The fields of the current request's one log line (command, task_id, outcome, ...): the HTTP
#: adapter's request-log middleware gives each request a fresh dict; the service adds to it.
log_fields: ContextVar[dict[str, Any] | None] = ContextVar("taskledger_log_fields", default=None)


def note(**fields: Any) -> None:
    found = log_fields.get()
    if found is not None:
        found.update(fields)


def now() -> datetime:
    return datetime.now(UTC)


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """A task as a use case answers it: its state and its decoded output, if any."""

    state: TaskState
    output: dict[str, Any] | None = None


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """What complete and fail answer: the task afterwards and, only when ``claim_next`` was
    asked, the task claimed next for the same worker (None when none was waiting). ``next`` is
    unset when not asked, and in an outcome replayed for an Idempotency-Key (the key covers
    the finish, not the claim after it)."""

    task: TaskView
    next: TaskView | None | msgspec.UnsetType = msgspec.UNSET


class ServiceCore:
    """What every use case shares: the store, group commit, the read pool, the clock, and the
    one path a command takes (idempotency, envelope, group commit, result)."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        reads: ReadPool,
        gate: Gate,
        settings: Settings,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.store = store
        self.writer = writer
        self.reads = reads
        self.gate = gate
        self.settings = settings
        self.clock = clock
        #: Downloads a create's file given by URL (none: such creates are refused). The
        #: composition root sets it (``open_service``).
        self.fetcher: Fetcher | None = None
        #: Set whenever this process makes a task claimable, to wake long-polling claims.
        self.queue_changed = asyncio.Event()

    def authenticate(self, authorization: str | None) -> Caller:
        return self.gate.authenticate(authorization)

    # -- the command path ---------------------------------------------------------------------

    def _output(self, state: TaskState, tx: Any = None) -> dict[str, Any] | None:
        """The decoded output blob of a task, or None (no output yet, or purged)."""
        if state.output is None:
            return None
        data = self.store.log.get_blob(state.output, tx=tx)
        return msgspec.json.decode(data) if data else None

    def _view(self, tx: Any, outcome: Outcome) -> TaskView:
        """The task after a command, its output read inside the transaction."""
        return TaskView(state=outcome.after, output=self._output(outcome.after, tx))

    def _bare(self, tx: Any, outcome: Outcome) -> TaskView:
        return TaskView(state=outcome.after)

    def _replayed(
        self,
        use_case: UseCase,
        caller: Caller,
        parts: Any,
        idempotency_key: str | None,
        result_type: type[R],
    ) -> R | None:
        """The stored outcome a retry is answered with (as ``_execute`` would answer it), or
        None: lets a use case skip work the retry would not use (a create's download)."""
        key = idempotency.check_key(idempotency_key)
        if key is None:
            return None
        stored = self.store.records.find_outcome(caller.key_id, key)
        if stored is None:
            return None
        return self._replay(stored, idempotency.fingerprint(use_case.name, parts), result_type)

    async def _run(
        self,
        use_case: UseCase,
        caller: Caller,
        command: CommandSource,
        result_type: type[R],
        build: Callable[[Any, Outcome], R],
        parts: Any,
        idempotency_key: str | None,
        request_id: str | None,
        *,
        blobs: Sequence[bytes] = (),
    ) -> R:
        result, _ = await self._execute(
            use_case,
            caller,
            command,
            result_type,
            build,
            parts,
            idempotency_key,
            request_id,
            blobs=blobs,
        )
        return result

    async def _execute(
        self,
        use_case: UseCase,
        caller: Caller,
        command: CommandSource,
        result_type: type[R],
        build: Callable[[Any, Outcome], R],
        parts: Any,
        idempotency_key: str | None,
        request_id: str | None,
        *,
        blobs: Sequence[bytes] = (),
    ) -> tuple[R, bool]:
        """Run a command through group commit and build its result in the transaction; with an
        Idempotency-Key, answer a retry from the stored outcome and store a new one. The flag
        says whether the result was replayed."""
        key = idempotency.check_key(idempotency_key)
        fp = idempotency.fingerprint(use_case.name, parts) if key is not None else ""
        if key is not None:
            stored = self.store.records.find_outcome(caller.key_id, key)
            if stored is not None:
                return self._replay(stored, fp, result_type), True

        def after_append(tx: Any, outcome: Outcome) -> R:
            result = build(tx, outcome)
            if key is not None:
                record = StoredOutcome(fingerprint=fp, outcome=msgspec.json.encode(result))
                stamp = self.clock().isoformat()
                self.store.records.record_outcome(tx, caller.key_id, key, record, stamp)
            return result

        envelope = Envelope(
            recorded_at=self.clock(),
            actor=Actor(key_id=caller.key_id, role=caller.role),
            request_id=request_id,
            idempotency_key=key,
        )
        name = type(command).__name__ if not callable(command) else "ClaimTask"
        note(command=name)
        job = Request(
            command=command, envelope=envelope, blobs=tuple(blobs), after_append=after_append
        )
        try:
            outcome = await self.writer.submit_async(job)
        except DuplicateRecord:
            assert key is not None
            stored = self.store.records.find_outcome(caller.key_id, key)
            assert stored is not None
            return self._replay(stored, fp, result_type), True
        except Exception as exc:
            note(outcome=type(exc).__name__)
            raise
        note(
            task_id=outcome.after.task_id,
            events=len(outcome.recorded),
            outcome="appended" if outcome.recorded else "unchanged",
        )
        self._notify(outcome)
        return outcome.extra, False

    def _replay(self, stored: StoredOutcome, fp: str, result_type: type[R]) -> R:
        if stored.legacy:
            raise IdempotencyMismatch(
                "Idempotency-Key was used before this server was upgraded: that request was"
                " done, and its answer cannot be replayed; use a new key"
            )
        if stored.fingerprint != fp:
            raise IdempotencyMismatch()
        try:
            result = msgspec.json.decode(stored.outcome, type=result_type)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise IdempotencyMismatch(
                "Idempotency-Key's stored answer cannot be read by this version of the server;"
                " the request was done; use a new key"
            ) from None
        note(outcome="replayed")
        return result

    async def run_system(self, command: AnyCommand) -> Outcome:
        """A command the service itself issues (the sweepers)."""
        outcome = await self.writer.submit_async(
            Request(command=command, envelope=Envelope(recorded_at=self.clock()))
        )
        self._notify(outcome)
        return outcome

    def _notify(self, outcome: Outcome) -> None:
        """Wake the claims waiting in this process when a task has become claimable."""
        if outcome.recorded and claimable(outcome.after):
            changed, self.queue_changed = self.queue_changed, asyncio.Event()
            changed.set()
