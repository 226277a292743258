"""Commands: what a caller asks of a task. Imperative names; they carry ids and timestamps so the
decider never reads a clock or makes a uuid.

``owner`` on a command is the scope of the caller: a ``user`` key passes its owner name and sees
only its own tasks; workers and admins pass ``None`` and may act on any task.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ledger.events import BlobRef, OutputSummary


class Command(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    at: datetime


class CreateTask(Command):
    owner: str
    configuration: dict[str, Any]
    file: BlobRef
    file_name: str | None = None
    expires_in: int | None = None
    media_type: str | None = None
    #: Where this task's own webhooks go (see ledger.webhooks); None: nowhere.
    webhook_url: str | None = None


class UpdateTask(Command):
    #: Configuration fields that replace the current ones, each whole.
    configuration: dict[str, Any]
    owner: str | None = None
    #: The most events a task's stream may hold before it runs no more updates (the server's
    #: ``--max-events-per-task``); None: no limit.
    max_events: int | None = None
    #: A new address for the task's own webhooks; None keeps the one it has.
    webhook_url: str | None = None


class CancelTask(Command):
    owner: str | None = None
    reason: str | None = None


class DeleteTask(Command):
    owner: str | None = None


class ClaimTask(Command):
    worker_id: str
    lease_until: datetime


class ExtendLease(Command):
    worker_id: str
    lease_until: datetime


class ReleaseTask(Command):
    """A worker gives the task back unfinished (it is shutting down): re-queued at once."""

    worker_id: str


class CompleteTask(Command):
    worker_id: str
    output: BlobRef
    summary: OutputSummary | None = None


class FailTask(Command):
    worker_id: str
    error: str


class ExpireLease(Command):
    """Sweeper: the lease has run out. Re-queue, or time out once attempts are used up."""

    max_attempts: int = 3


class ExpireTask(Command):
    """Sweeper: a terminal task is past its ``expires_at``."""


AnyCommand = (
    CreateTask
    | UpdateTask
    | CancelTask
    | DeleteTask
    | ClaimTask
    | ExtendLease
    | ReleaseTask
    | CompleteTask
    | FailTask
    | ExpireLease
    | ExpireTask
)
