"""The ledger wired up: one SQLite file holding the log, its blobs and the inline projections,
and the command handler that writes to all of them in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.decider import fold
from ledger.commands import AnyCommand
from ledger.handler import CommandHandler, CommandSource
from ledger.log import RecordedEvent, stream_id_for
from ledger.sqlite_log import SqliteLog
from ledger.state import TaskState
from projections.queue import QueueProjection
from projections.tasks import TasksProjection


class Store:
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        schemas: tuple[str, ...] = (),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.tasks = TasksProjection()
        self.queue = QueueProjection()
        self.log = SqliteLog(
            path,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            schemas=(self.tasks.schema, self.queue.schema, *schemas),
        )
        self.handler = CommandHandler(self.log, self.tasks, [self.tasks, self.queue], clock=clock)

    @property
    def path(self) -> Path:
        return self.log.path

    def state(self, task_id: str) -> TaskState | None:
        """The projected state of a task (one indexed row), or None if it was never created."""
        return self.tasks.get(self.log.reader(), task_id)

    def replay(self, task_id: str, *, until_version: int | None = None) -> TaskState | None:
        """The task's state folded afresh from its events (up to ``until_version``)."""
        events = self.log.read_stream(stream_id_for(task_id), until_version=until_version)
        return fold(e.event for e in events) if events else None

    def history(self, task_id: str) -> list[RecordedEvent]:
        return self.log.read_stream(stream_id_for(task_id))

    def claim_source(self, make_command: Callable[[str], AnyCommand | None]) -> CommandSource:
        """A command source that picks the head of the queue inside the write transaction
        (``make_command`` may still decline it by returning None)."""

        def pick(tx: Any) -> AnyCommand | None:
            task_id = self.queue.head(tx)
            return make_command(task_id) if task_id is not None else None

        return pick

    def close(self) -> None:
        self.log.close()
