"""The decider: ``decide(command, state) -> events`` and ``evolve(state, event) -> state``.

Pure: no clock, no uuid, no I/O. Every task rule lives here and nowhere else: the lifecycle,
who holds a lease, and when a task is visible at all (``visible_until``, decided from the
command's own time ``at``; the read models store the same value for their queries).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ledger.commands import (
    AnyCommand,
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
from ledger.errors import (
    EventLimitReached,
    InvalidTransition,
    LeaseLost,
    TaskAlreadyExists,
    TaskNotFound,
)
from ledger.events import (
    CANCELLED,
    FAILED,
    PROCESSING,
    STARTING,
    SUCCEEDED,
    TERMINAL,
    AnyEvent,
    Cancelled,
    Claimed,
    Deleted,
    Expired,
    Failed,
    LeaseExpired,
    LeaseExtended,
    Succeeded,
    TaskCreated,
    TimedOut,
    UpdateRequested,
)
from ledger.state import TaskState

MSG_QUEUED = "Task queued"
MSG_QUEUED_FOR_UPDATE = "Task queued for update"
MSG_STARTED = "Task started"
MSG_SUCCEEDED = "Task succeeded"
MSG_CANCELLED = "Task cancelled"
MSG_TIMED_OUT = "Task timed out"
MSG_LEASE_EXPIRED = "Task re-queued: the worker's lease expired"
MSG_RELEASED = "Task re-queued: the worker released it"


def update_failed_message(error: str) -> str:
    return f"Task update failed: {error}"


def initial_state(task_id: str) -> TaskState:
    return TaskState(task_id=task_id)


def updated_configuration(current: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """An update's configuration: each top-level field sent replaces the current one whole (the
    caller has filled it with its own defaults); the fields not sent keep their values."""
    return {**current, **sent}


def _expiry(at: datetime, expires_in: int | None) -> datetime | None:
    return at + timedelta(seconds=expires_in) if expires_in is not None else None


def visible_until(state: TaskState) -> datetime | None:
    """When a live task stops being visible: a finished task (Succeeded, Failed, Cancelled) at
    its ``expires_at``; None while it is visible for as long as it is live. A pending update
    keeps the old ``expires_at`` (as Chunkr does) but is not finished, so it does not expire."""
    return state.expires_at if state.status in TERMINAL else None


def is_visible(state: TaskState, at: datetime) -> bool:
    """Created, neither deleted nor expired, and not past ``visible_until`` at ``at`` (a task
    past it is gone for every reader even before the sweeper records Expired)."""
    if not state.live:
        return False
    until = visible_until(state)
    return until is None or until > at


def _visible(command: AnyCommand, state: TaskState) -> None:
    """Raise TaskNotFound unless the task is visible at the command's time and within the
    caller's scope."""
    if not is_visible(state, command.at):
        raise TaskNotFound()
    owner = getattr(command, "owner", None)
    if owner is not None and owner != state.owner:
        raise TaskNotFound()


def _holds_lease(worker_id: str, state: TaskState) -> None:
    if state.status != PROCESSING:
        raise LeaseLost(
            f"Worker {worker_id} does not hold the lease on this task: status is {state.status}"
        )
    if state.worker_id != worker_id:
        raise LeaseLost(
            f"Worker {worker_id} does not hold the lease on this task: it is held by another worker"
        )


def decide(command: AnyCommand, state: TaskState) -> list[AnyEvent]:
    """The events ``command`` produces against ``state``, or a LedgerError saying why not."""
    tid, at = command.task_id, command.at
    match command:
        case CreateTask():
            if state.exists:
                raise TaskAlreadyExists()
            return [
                TaskCreated(
                    task_id=tid,
                    at=at,
                    owner=command.owner,
                    configuration=command.configuration,
                    file=command.file,
                    file_name=command.file_name,
                    expires_in=command.expires_in,
                    media_type=command.media_type,
                    webhook_url=command.webhook_url,
                )
            ]
        case ExpireLease():
            if not state.live or state.status != PROCESSING or state.lease_until is None:
                return []
            if state.lease_until > at:
                return []
            expired = LeaseExpired(
                task_id=tid, at=at, worker_id=state.worker_id or "", attempt=state.attempt
            )
            if state.attempt >= command.max_attempts:
                return [expired, TimedOut(task_id=tid, at=at, attempt=state.attempt)]
            return [expired]
        case ExpireTask():
            if state.live and not is_visible(state, at):
                return [Expired(task_id=tid, at=at)]
            return []

    _visible(command, state)
    status = state.status
    match command:
        case UpdateTask():
            # The cap on a task's events is checked here and only here: an update is the one
            # command that starts the task over (a new run, more events after it). Cancel and
            # delete end something, once; the workers' and sweepers' commands finish the run
            # already under way, which must never be stranded.
            if command.max_events is not None and state.version >= command.max_events:
                raise EventLimitReached(command.max_events)
            if status not in (SUCCEEDED, FAILED):
                raise InvalidTransition(f"Task cannot be updated: status is {status}")
            configuration = updated_configuration(state.configuration, command.configuration)
            expires_in = configuration.get("expires_in", state.expires_in)
            return [
                UpdateRequested(
                    task_id=tid,
                    at=at,
                    configuration=configuration,
                    expires_in=expires_in,
                    webhook_url=command.webhook_url,
                )
            ]
        case CancelTask():
            if status != STARTING:
                raise InvalidTransition(f"Task cannot be cancelled: status is {status}")
            return [Cancelled(task_id=tid, at=at, reason=command.reason)]
        case DeleteTask():
            if status not in TERMINAL:
                raise InvalidTransition(f"Task cannot be deleted: status is {status}")
            return [Deleted(task_id=tid, at=at)]
        case ClaimTask():
            if status != STARTING:
                raise InvalidTransition(f"Task cannot be claimed: status is {status}")
            return [
                Claimed(
                    task_id=tid,
                    at=at,
                    worker_id=command.worker_id,
                    lease_until=command.lease_until,
                    attempt=state.attempt + 1,
                )
            ]
        case ExtendLease():
            _holds_lease(command.worker_id, state)
            return [
                LeaseExtended(
                    task_id=tid, at=at, worker_id=command.worker_id, lease_until=command.lease_until
                )
            ]
        case ReleaseTask():
            _holds_lease(command.worker_id, state)
            return [
                LeaseExpired(
                    task_id=tid,
                    at=at,
                    worker_id=command.worker_id,
                    attempt=state.attempt,
                    reason="released",
                )
            ]
        case CompleteTask():
            _holds_lease(command.worker_id, state)
            return [
                Succeeded(
                    task_id=tid,
                    at=at,
                    worker_id=command.worker_id,
                    output=command.output,
                    summary=command.summary,
                )
            ]
        case FailTask():
            _holds_lease(command.worker_id, state)
            return [Failed(task_id=tid, at=at, worker_id=command.worker_id, error=command.error)]
    raise TypeError(f"unknown command {type(command).__name__}")  # pragma: no cover


def evolve(state: TaskState, event: AnyEvent) -> TaskState:
    """The state after ``event``. Never raises for an event the decider produced."""
    replace = msgspec.structs.replace
    v = state.version + 1  # every event bumps the version; one replace per event keeps folds fast
    at = event.at
    match event:
        case TaskCreated():
            return replace(
                state,
                version=v,
                owner=event.owner,
                status=STARTING,
                message=MSG_QUEUED,
                configuration=event.configuration,
                file=event.file,
                file_name=event.file_name,
                expires_in=event.expires_in,
                media_type=event.media_type,
                created_at=at,
                webhook_url=event.webhook_url,
            )
        case UpdateRequested():
            return replace(
                state,
                version=v,
                prior=state.snapshot(),
                status=STARTING,
                message=MSG_QUEUED_FOR_UPDATE,
                configuration=event.configuration,
                expires_in=event.expires_in,
                webhook_url=event.webhook_url or state.webhook_url,
                # An update is a new run: it gets its own max_attempts, whatever earlier runs used.
                attempt=0,
            )
        case Claimed():
            return replace(
                state,
                version=v,
                status=PROCESSING,
                message=MSG_STARTED,
                started_at=at,
                worker_id=event.worker_id,
                lease_until=event.lease_until,
                attempt=event.attempt,
            )
        case LeaseExtended():
            return replace(state, version=v, lease_until=event.lease_until)
        case LeaseExpired():
            if event.reason == "released":
                # A worker handing a task back (say on SIGTERM) did not use up an attempt.
                return replace(
                    state,
                    version=v,
                    status=STARTING,
                    message=MSG_RELEASED,
                    worker_id=None,
                    lease_until=None,
                    attempt=max(0, state.attempt - 1),
                )
            return replace(
                state,
                version=v,
                status=STARTING,
                message=MSG_LEASE_EXPIRED,
                worker_id=None,
                lease_until=None,
            )
        case Succeeded():
            return replace(
                state,
                version=v,
                status=SUCCEEDED,
                message=MSG_SUCCEEDED,
                output=event.output,
                output_summary=event.summary,
                finished_at=at,
                expires_at=_expiry(at, state.expires_in),
                worker_id=None,
                lease_until=None,
                prior=None,
            )
        case Failed() | TimedOut():
            error = event.error if isinstance(event, Failed) else MSG_TIMED_OUT
            if state.prior is not None:
                return state.restored(state.prior, version=v, message=update_failed_message(error))
            return replace(
                state,
                version=v,
                status=FAILED,
                message=error,
                finished_at=at,
                expires_at=_expiry(at, state.expires_in),
                worker_id=None,
                lease_until=None,
            )
        case Cancelled():
            if state.prior is not None:
                return state.restored(state.prior, version=v)
            return replace(
                state,
                version=v,
                status=CANCELLED,
                message=MSG_CANCELLED,
                finished_at=at,
                expires_at=_expiry(at, state.expires_in),
            )
        case Expired():
            return replace(state, version=v, gone="expired", worker_id=None, lease_until=None)
        case Deleted():
            return replace(state, version=v, gone="deleted", worker_id=None, lease_until=None)
    raise TypeError(f"unknown event {type(event).__name__}")  # pragma: no cover


def fold(events: Iterable[AnyEvent], state: TaskState | None = None) -> TaskState:
    """Evolve from ``state`` (or the initial state of the first event's task) through ``events``."""
    for event in events:
        if state is None:
            state = initial_state(event.task_id)
        state = evolve(state, event)
    if state is None:
        raise ValueError("fold() of no events needs an initial state")
    return state
