"""The command handler: read state -> decide -> append -> project -> commit, atomically.

Everything a command writes (blobs, events, inline projections, the caller's own bookkeeping
such as an idempotency record) happens inside one ``BEGIN IMMEDIATE`` transaction. A batch runs
several commands in one transaction (group commit: one fsync for all of them), each decided
against the state left by the commands before it. A command the decider refuses has written
nothing, so it does not spoil the rest of its batch. A command that fails after it has begun to
write (a constraint, an idempotency race, the disk) would leave part of its writes behind: then
the whole transaction is rolled back and the batch runs again with each command in its own
SAVEPOINT, so only that command's writes are undone. Savepoints cost two statements per command,
so the common case does without them.

The handler knows projections only through the two small protocols below, so ``ledger`` imports
nothing from ``projections``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from ledger import decider
from ledger import webhooks as hooks
from ledger.commands import AnyCommand, Command
from ledger.errors import LedgerError, TransactionRolledBack
from ledger.log import Envelope, EventLog, RecordedEvent, stream_id_for
from ledger.state import TaskState


class StateStore(Protocol):
    """Where the current state of a task is read from inside the write transaction."""

    def load(self, tx: Any, task_id: str) -> TaskState: ...

    def prefetch(self, tx: Any, task_ids: Sequence[str]) -> None:
        """The tasks a batch will load, known before its first command runs (a hint: a store
        that pays a round trip per read can read them at once)."""
        ...


class InlineProjection(Protocol):
    """A read model updated in the same transaction as the append."""

    def apply(
        self, tx: Any, before: TaskState, after: TaskState, recorded: Sequence[RecordedEvent]
    ) -> None: ...


class SubscriptionStore(Protocol):
    """Where a webhook subscription's state is read from inside the write transaction."""

    def load(self, tx: Any, webhook_id: str) -> hooks.WebhookState: ...


class SubscriptionProjection(Protocol):
    """A read model of the subscriptions, updated in the same transaction as the append."""

    def apply(
        self,
        tx: Any,
        before: hooks.WebhookState,
        after: hooks.WebhookState,
        recorded: Sequence[RecordedEvent],
    ) -> None: ...


S = TypeVar("S")


class Outcome(msgspec.Struct, Generic[S], frozen=True, kw_only=True):
    """A command's result: the state before and after it (a task's ``TaskState``, or a
    subscription's ``WebhookState`` for a webhook command) and the events it appended."""

    before: S
    after: S
    recorded: list[RecordedEvent]
    extra: Any = None


#: A command, or a function that picks one inside the transaction (for example "claim the task at
#: the head of the queue"); it returns None when there is nothing to do.
CommandSource = AnyCommand | hooks.AnyWebhookCommand | Callable[[Any], AnyCommand | None]
#: Called inside the transaction after the append; its return value lands in Outcome.extra.
AfterAppend = Callable[[Any, Outcome], Any]


class Request(msgspec.Struct, frozen=True, kw_only=True):
    command: Any  # CommandSource
    envelope: Envelope
    blobs: tuple[bytes, ...] = ()
    after_append: Any = None  # AfterAppend | None


class Chore(msgspec.Struct, frozen=True):
    """Work that is not a command but rides a batch's transaction, and its one commit: the
    webhook dispatcher's leases and attempts (``api.dispatch``). ``run(tx)`` may read and
    write; what it returns is its result in the batch. Like a command's, its writes are undone
    alone if it raises after writing (the batch is rerun with a savepoint per item), and all of
    them if the transaction cannot commit: so it must be safe to run again."""

    run: Any  # Callable[[Any], Any]


class NothingToDo(LedgerError):
    """A command source found nothing to act on (an empty queue)."""

    def __init__(self, message: str = "Nothing to do") -> None:
        super().__init__(message)


class CommandHandler:
    def __init__(
        self,
        log: EventLog,
        states: StateStore,
        projections: Sequence[InlineProjection],
        *,
        clock: Callable[[], datetime] | None = None,
        subscriptions: SubscriptionStore | None = None,
        subscription_projections: Sequence[SubscriptionProjection] = (),
    ) -> None:
        self.log = log
        self.states = states
        self.projections = tuple(projections)
        #: Webhook subscriptions: their streams' state and read model (none: webhook commands
        #: are refused).
        self.subscriptions = subscriptions
        self.subscription_projections = tuple(subscription_projections)
        #: When set, each batch's events are recorded at the time its transaction began (the
        #: commit order), not at the time their envelopes were made.
        self.clock = clock

    def execute(
        self,
        command: CommandSource,
        envelope: Envelope,
        *,
        blobs: Sequence[bytes] = (),
        after_append: AfterAppend | None = None,
    ) -> Outcome:
        """Run one command in its own transaction; raise its LedgerError if it is refused."""
        request = Request(
            command=command, envelope=envelope, blobs=tuple(blobs), after_append=after_append
        )
        (result,) = self.execute_batch([request])
        if isinstance(result, BaseException):
            raise result
        return result

    def execute_batch(
        self,
        requests: Sequence[Request | Chore],
        *,
        begun: Callable[[], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> list[Outcome | BaseException]:
        """Run every request in one transaction. Each result is an Outcome or the exception that
        refused that request; if the transaction cannot begin or commit, or the database rolls
        it back as a whole, every request gets that error (none of them is done).
        ``begun`` is called once the transaction has begun, ``before_commit`` once every command
        has run, just before COMMIT, or once the first attempt has failed if the batch is rerun
        guarded (the rerun calls neither)."""
        try:
            return self._execute_batch(
                requests, guarded=False, begun=begun, before_commit=before_commit
            )
        except _PartlyWritten:
            if before_commit is not None:
                before_commit()
        try:
            return self._execute_batch(requests, guarded=True)
        except Exception as exc:  # the transaction could not begin or commit, or was lost
            return [exc for _ in requests]

    def _execute_batch(
        self,
        requests: Sequence[Request | Chore],
        *,
        guarded: bool,
        begun: Callable[[], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> list[Outcome | BaseException]:
        """One transaction over ``requests``. Unguarded, a command that fails after writing
        raises _PartlyWritten (the transaction is rolled back); guarded, each command runs in
        a savepoint and any failure is that command's result."""
        results: list[Outcome | BaseException] = []
        try:
            with self.log.transaction() as tx:
                if begun is not None:
                    begun()
                if self.clock is not None:
                    stamp = self.clock()
                    requests = [
                        msgspec.structs.replace(
                            r, envelope=msgspec.structs.replace(r.envelope, recorded_at=stamp)
                        )
                        if isinstance(r, Request)
                        else r
                        for r in requests
                    ]
                self.states.prefetch(
                    tx,
                    [
                        r.command.task_id
                        for r in requests
                        if isinstance(r, Request) and isinstance(r.command, Command)
                    ],
                )
                for request in requests:
                    if isinstance(request, Chore):
                        results.append(self._chore(tx, request, guarded))
                        continue
                    if guarded:
                        try:
                            # Released before its outcome counts: a backend may report a
                            # write's error only when the savepoint ends.
                            with self.log.savepoint(tx, "command"):
                                outcome = self._run(tx, request)
                            results.append(outcome)
                        except TransactionRolledBack:
                            raise
                        except Exception as exc:
                            results.append(exc)
                        continue
                    try:
                        planned = self._decide(tx, request)
                    except Exception as exc:
                        results.append(exc)
                        continue
                    try:
                        results.append(self._write(tx, request, *planned))
                    except Exception as exc:
                        raise _PartlyWritten() from exc
                if before_commit is not None:
                    before_commit()
        except _PartlyWritten:
            raise
        except Exception as exc:  # the transaction could not begin or commit, or was lost
            if not guarded:
                raise _PartlyWritten() from exc
            raise
        return results

    def _chore(self, tx: Any, chore: Chore, guarded: bool) -> Any:
        if not guarded:
            try:
                return chore.run(tx)
            except Exception as exc:
                raise _PartlyWritten() from exc
        try:
            with self.log.savepoint(tx, "chore"):
                value = chore.run(tx)
            return value
        except TransactionRolledBack:
            raise
        except Exception as exc:
            return exc

    def _run(self, tx: Any, request: Request) -> Outcome:
        return self._write(tx, request, *self._decide(tx, request))

    def _decide(self, tx: Any, request: Request) -> tuple[Any, Any, list[Any]]:
        """Read and decide: no writes, so a refusal here leaves the transaction untouched."""
        command = request.command
        if callable(command):
            command = command(tx)
            if command is None:
                raise NothingToDo()
        if isinstance(command, hooks.WebhookCommand):
            if self.subscriptions is None:
                raise LedgerError("This ledger keeps no webhook subscriptions")
            subscription = self.subscriptions.load(tx, command.webhook_id)
            return command, subscription, hooks.decide(command, subscription)  # type: ignore[arg-type]
        before = self.states.load(tx, command.task_id)
        return command, before, decider.decide(command, before)

    def _write(
        self, tx: Any, request: Request, command: Any, before: Any, events: list[Any]
    ) -> Outcome:
        if isinstance(before, hooks.WebhookState):
            return self._write_subscription(tx, request, before, events)
        if not events:
            outcome = Outcome(before=before, after=before, recorded=[])
        else:
            for data in request.blobs:
                self.log.put_blob(command.task_id, data, tx=tx)
            recorded = self.log.append(
                stream_id_for(command.task_id), before.version, events, request.envelope, tx=tx
            )
            after = decider.fold(events, before)
            if after.gone is not None and before.gone is None:
                self.log.purge_blobs(command.task_id, tx=tx)
            for projection in self.projections:
                projection.apply(tx, before, after, recorded)
            outcome = Outcome(before=before, after=after, recorded=recorded)
        if request.after_append is not None:
            outcome = msgspec.structs.replace(outcome, extra=request.after_append(tx, outcome))
        return outcome

    def _write_subscription(
        self, tx: Any, request: Request, before: hooks.WebhookState, events: list[Any]
    ) -> Outcome:
        if not events:
            outcome: Outcome = Outcome(before=before, after=before, recorded=[])
        else:
            recorded = self.log.append(
                hooks.webhook_stream_id(before.webhook_id),
                before.version,
                events,
                request.envelope,
                tx=tx,
            )
            after = hooks.fold(events, before)
            for projection in self.subscription_projections:
                projection.apply(tx, before, after, recorded)
            outcome = Outcome(before=before, after=after, recorded=recorded)
        if request.after_append is not None:
            outcome = msgspec.structs.replace(outcome, extra=request.after_append(tx, outcome))
        return outcome


class _PartlyWritten(Exception):
    """A command failed after it began to write, or the unguarded transaction failed: the
    batch is retried with a savepoint per command."""
