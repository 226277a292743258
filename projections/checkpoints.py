"""Checkpoints: a task's state kept after every ``CHECKPOINT_EVERY``-th event, so that reading a
task as it was after its N-th event (time travel) folds at most ``CHECKPOINT_EVERY - 1`` events
instead of all N.

Updated inline, in the append's transaction, like the ``tasks`` row: a command whose events
take the stream past a multiple of the interval folds its events from the state before it and
keeps the state at each multiple. The checkpoint is exactly the fold of the stream's first
``version`` events (``taskledger verify`` checks every one), so folding on from it gives exactly
what folding the whole prefix gives. A checkpoint is only ever a shortcut: where one is missing
(a database from before checkpoints, until ``taskledger rebuild`` writes them) the fold starts
from the nearest earlier one, or from the first event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.decider import evolve, fold
from ledger.log import EventLog, RecordedEvent, TaskViews, stream_id_for, task_event, task_events
from ledger.state import TaskState

#: Events between two checkpoints of a task. Time travel folds at most this many less one
#: events (about 4 ms for 999 here, read and folded); a checkpoint costs one row of a few
#: hundred bytes to a few KiB (the task's state) per this many events.
CHECKPOINT_EVERY = 1000


def due(before: int, after: int, every: int) -> bool:
    """Whether going from version ``before`` to ``after`` passes a multiple of ``every``."""
    return after // every > before // every


class CheckpointProjection:
    def __init__(self, views: TaskViews, every: int = CHECKPOINT_EVERY) -> None:
        if every < 1:
            raise ValueError("a checkpoint interval is 1 event or more")
        self.views = views
        self.every = every

    def apply(
        self, tx: Any, before: TaskState, after: TaskState, recorded: Sequence[RecordedEvent]
    ) -> None:
        if not due(before.version, after.version, self.every):
            return
        state = before
        for item in recorded:
            state = evolve(state, task_event(item))
            if state.version % self.every == 0:
                self.views.save_checkpoint(tx, state)


def state_at(
    log: EventLog, views: TaskViews, task_id: str, version: int, *, tx: Any = None
) -> TaskState | None:
    """The task's state after its ``version``-th event: its latest checkpoint at or before it,
    folded on through the events after the checkpoint up to ``version`` (read by version range).
    None if the stream has no events up to ``version``."""
    start = views.load_checkpoint(task_id, version, tx=tx)
    after = start.version if start is not None else 0
    events = log.read_stream(stream_id_for(task_id), after=after, until_version=version, tx=tx)
    if start is None and not events:
        return None
    return fold(task_events(events), start)
