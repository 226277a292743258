"""The ``tasks`` projection: one row per task holding its folded state and version.

Updated inline (same transaction as the append). ``GET /task/{id}`` reads one row by primary
key; lists read an index. The row's state is exactly ``fold(read_stream(task))``, which
``taskledger verify`` checks. Where the rows are kept is the backend's (``TaskViews``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.decider import initial_state
from ledger.log import RecordedEvent, TaskViews
from ledger.state import TaskState


class TasksProjection:
    def __init__(self, views: TaskViews) -> None:
        self.views = views

    def load(self, tx: Any, task_id: str) -> TaskState:
        """The task's current state inside the write transaction (the handler's StateStore)."""
        return self.views.load_task(task_id, tx=tx) or initial_state(task_id)

    def prefetch(self, tx: Any, task_ids: Sequence[str]) -> None:
        """The tasks a batch is about to load (the handler's StateStore)."""
        self.views.prefetch_tasks(tx, task_ids)

    def apply(
        self, tx: Any, before: TaskState, after: TaskState, recorded: Sequence[RecordedEvent]
    ) -> None:
        self.views.save_task(tx, after)
