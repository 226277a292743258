"""TaskState: what a fold of one task's events gives. Frozen; evolve returns a new one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ledger.events import BlobRef, OutputSummary


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The fields an update can change, as they were before it: what cancelling or failing the
    update restores, exactly."""

    status: str
    message: str
    configuration: dict[str, Any]
    expires_in: int | None
    output: BlobRef | None
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    output_summary: OutputSummary | None = None
    webhook_url: str | None = None


class TaskState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    task_id: str
    #: Number of events folded into this state (the stream version); 0 for a task never created.
    version: int = 0
    owner: str | None = None
    status: str | None = None
    message: str = ""
    configuration: dict[str, Any] = {}
    file: BlobRef | None = None
    file_name: str | None = None
    media_type: str | None = None
    expires_in: int | None = None
    output: BlobRef | None = None
    #: What answers show of the output without reading it (None before the first success, and
    #: for an output recorded before summaries were: see ledger.events.Succeeded).
    output_summary: OutputSummary | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    #: Lease: who holds the task while it is Processing, until when, and how many claims so far.
    worker_id: str | None = None
    lease_until: datetime | None = None
    attempt: int = 0
    #: The state a pending update would restore if it is cancelled or fails.
    prior: Snapshot | None = None
    #: "deleted" or "expired" once the task is a tombstone (404 for reads, blobs purged).
    gone: str | None = None
    #: Where the task's own webhooks go (``webhook_url`` on create or update), or None.
    webhook_url: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def live(self) -> bool:
        """Created and neither deleted nor expired."""
        return self.version > 0 and self.gone is None

    def snapshot(self) -> Snapshot:
        assert self.status is not None
        return Snapshot(
            status=self.status,
            message=self.message,
            configuration=self.configuration,
            expires_in=self.expires_in,
            output=self.output,
            output_summary=self.output_summary,
            started_at=self.started_at,
            finished_at=self.finished_at,
            expires_at=self.expires_at,
            webhook_url=self.webhook_url,
        )

    def restored(self, prior: Snapshot, **overrides: Any) -> TaskState:
        """This state with the snapshot's fields put back, the lease cleared, no pending update."""
        fields = msgspec.structs.asdict(prior)
        fields.update(overrides)
        return msgspec.structs.replace(self, **fields, prior=None, worker_id=None, lease_until=None)
