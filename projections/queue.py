"""The ``queue`` projection: claimable (Starting) tasks in FIFO order.

A task enters the queue at the position of the event that made it claimable (created, update
requested, lease expired or released) and leaves it when it is claimed, cancelled, deleted or
expired. The head of the queue is the entry with the lowest position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.events import STARTING
from ledger.log import RecordedEvent, TaskViews
from ledger.state import TaskState


def claimable(state: TaskState) -> bool:
    return state.live and state.status == STARTING


def queue_position(
    before: TaskState, after: TaskState, position: int, current: int | None
) -> int | None:
    """Where the task stands in the queue after an event at ``position``: it joins at the
    position of the event that made it claimable, keeps its place while it stays claimable, and
    leaves when it stops being claimable."""
    if not claimable(after):
        return None
    return current if claimable(before) and current is not None else position


class QueueProjection:
    def __init__(self, views: TaskViews) -> None:
        self.views = views

    def apply(
        self, tx: Any, before: TaskState, after: TaskState, recorded: Sequence[RecordedEvent]
    ) -> None:
        # A task has a queue entry exactly when it is claimable (``verify`` checks it), so
        # ``before`` says whether there is one without reading it.
        was, now = claimable(before), claimable(after)
        if was and not now:
            self.views.dequeue(tx, after.task_id)
        elif now and not was:
            self.views.enqueue(tx, after.task_id, recorded[-1].position)
