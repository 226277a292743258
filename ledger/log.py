"""The EventLog protocol and the envelope every recorded event carries.

The domain never sees SQL: the decider works on events, the log stores them. One SQLite
implementation lives in ``ledger.sqlite_log``; a PostgreSQL one would implement the same protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

import msgspec

from ledger.events import AnyEvent, BlobRef


def stream_id_for(task_id: str) -> str:
    return f"task-{task_id}"


def task_id_of(stream_id: str) -> str:
    return stream_id.removeprefix("task-")


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who caused an event: the API key's id and its role (``system`` for the sweepers)."""

    key_id: str | None
    role: str


SYSTEM = Actor(key_id=None, role="system")


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller knows about an append besides the events themselves."""

    recorded_at: datetime
    actor: Actor = SYSTEM
    request_id: str | None = None
    idempotency_key: str | None = None


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    stream_id: str
    version: int
    recorded_at: datetime
    actor: Actor
    request_id: str | None
    idempotency_key: str | None
    event: AnyEvent
    #: The hash chain link: sha256 over the previous hash, this envelope and the event's data.
    hash: str = ""


class EventLog(Protocol):
    """An append-only log of events in streams, with a global position order."""

    def transaction(self) -> AbstractContextManager[Any]:
        """An exclusive write transaction; yields the handle the other calls take as ``tx``."""
        ...

    def savepoint(self, tx: Any, name: str) -> AbstractContextManager[None]:
        """A nested unit of ``tx`` that undoes only its own writes on error; raises
        TransactionRolledBack if the database has abandoned the whole of ``tx``."""
        ...

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[AnyEvent],
        envelope: Envelope,
        *,
        tx: Any = None,
    ) -> list[RecordedEvent]:
        """Append ``events`` after ``expected_version``; ConcurrencyConflict if it is stale."""
        ...

    def read_stream(
        self, stream_id: str, *, until_version: int | None = None
    ) -> list[RecordedEvent]: ...

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]: ...

    def iter_all(self, after: int = 0, batch: int = 10_000) -> Iterator[RecordedEvent]: ...

    def put_blob(self, task_id: str, data: bytes, *, tx: Any) -> BlobRef: ...

    def get_blob(self, ref: BlobRef) -> bytes | None: ...

    def purge_blobs(self, task_id: str, *, tx: Any) -> int: ...

    def close(self) -> None: ...
