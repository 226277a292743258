"""The task lifecycle as one msgspec tagged union.

This module is a storage format: every event is written to the log as JSON with its tag in the
``type`` field. Tags are written out and never change; new fields get defaults; a field's type is
never changed. Renaming a class is safe, renaming a tag is not.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import msgspec

#: The task statuses, spelled exactly as Chunkr spells them on the wire.
STARTING = "Starting"
PROCESSING = "Processing"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELLED = "Cancelled"
STATUSES = (STARTING, PROCESSING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class BlobRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A reference to a content-addressed payload (input file, output) in the blob table."""

    sha256: str
    size: int


class OutputSummary(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What an answer shows of an output besides its chunks, so that a read that does not
    return the chunks never reads the output's blob: the output's ``file_name``,
    ``page_count`` and ``pdf_url`` as stored, and how many chunks it holds (its byte size is
    the blob reference's). Written by the service when it checks the output."""

    file_name: str | None = None
    page_count: int | None = None
    pdf_url: str | None = None
    chunks: int = 0


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every event: which task, and when it happened (the command's timestamp)."""

    task_id: str
    at: datetime


class TaskCreated(Event, tag="task_created"):
    owner: str
    configuration: dict[str, Any]
    file: BlobRef
    file_name: str | None = None
    expires_in: int | None = None
    #: The input's type as its first bytes show it (``application/pdf``...); None when unknown
    #: and in events written before the field existed.
    media_type: str | None = None
    #: Where the task's own webhooks go, signed with its owner's default secret (None: none).
    webhook_url: str | None = None


class UpdateRequested(Event, tag="update_requested"):
    configuration: dict[str, Any]
    expires_in: int | None = None
    #: A new address for the task's own webhooks; None: the one it had stays.
    webhook_url: str | None = None


class Claimed(Event, tag="claimed"):
    worker_id: str
    lease_until: datetime
    attempt: int


class LeaseExtended(Event, tag="lease_extended"):
    worker_id: str
    lease_until: datetime


class LeaseExpired(Event, tag="lease_expired"):
    worker_id: str
    attempt: int
    #: "expired" when the sweeper found the lease past its end, "released" when the worker gave
    #: the task back (for example on SIGTERM).
    reason: str = "expired"


class Succeeded(Event, tag="succeeded"):
    worker_id: str
    output: BlobRef
    #: The output's summary; None in events written before the field existed (a read then
    #: works it out from the blob).
    summary: OutputSummary | None = None


class Failed(Event, tag="failed"):
    worker_id: str
    error: str


class Cancelled(Event, tag="cancelled"):
    reason: str | None = None


class TimedOut(Event, tag="timed_out"):
    attempt: int


class Expired(Event, tag="expired"):
    pass


class Deleted(Event, tag="deleted"):
    pass


AnyEvent = (
    TaskCreated
    | UpdateRequested
    | Claimed
    | LeaseExtended
    | LeaseExpired
    | Succeeded
    | Failed
    | Cancelled
    | TimedOut
    | Expired
    | Deleted
)

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__


def tag_of(event_type: type[msgspec.Struct]) -> str:
    """The stored tag of an event class (``tag_of(Cancelled) == "cancelled"``; a webhook
    subscription's events have theirs too)."""
    return event_type.__struct_config__.tag  # type: ignore[return-value]


EVENT_TAGS: tuple[str, ...] = tuple(tag_of(t) for t in EVENT_TYPES)


def blob_ref(data: bytes) -> BlobRef:
    """The content address of ``data``."""
    return BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
