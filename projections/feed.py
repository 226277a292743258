"""The ``feed`` projection: each owner's feed entries, one per event of their live tasks.

Updated inline (same transaction as the append), so a user's feed and its live stream read one
range of their own entries (``TaskViews.feed`` with an owner) instead of walking the whole log
for the few events that are theirs. When a task becomes a tombstone (deleted, or expired by the
sweeper) its entries leave the feed, all but the tombstone itself: the task's history (its file
name, its configuration) is 404 everywhere else to its owner, and the tombstone, which holds
nothing but the task id and the time, tells a live reader that the task is gone. An admin's
feed is the log itself and keeps everything. ``taskledger verify`` checks the entries against
the log and ``taskledger rebuild`` writes them again, both through ``feed_after``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.events import AnyEvent, tag_of
from ledger.log import FeedEntry, RecordedEvent, TaskViews, task_event
from ledger.state import TaskState


def leaves_feed(before: TaskState, after: TaskState) -> bool:
    """Whether the events that turned ``before`` into ``after`` made the task a tombstone."""
    return after.gone is not None and before.gone is None


def feed_after(
    kept: list[FeedEntry], before: TaskState, after: TaskState, new: Sequence[FeedEntry]
) -> list[FeedEntry]:
    """A task's entries once ``new`` (the entries of the events that turned ``before`` into
    ``after``) are added to those it ``kept``: all of them, or only the tombstone once it is
    gone."""
    if leaves_feed(before, after):
        return list(new[-1:])
    return [*kept, *new]


def entries_of(state: TaskState, events: Sequence[tuple[int, AnyEvent]]) -> list[FeedEntry]:
    """The feed entries of ``(position, event)`` appended to the task whose state is now
    ``state``."""
    if state.owner is None:  # no task_created: nothing is anyone's yet
        return []
    return [
        FeedEntry(
            position=position, owner=state.owner, task_id=state.task_id, type=tag_of(type(event))
        )
        for position, event in events
    ]


class FeedProjection:
    def __init__(self, views: TaskViews) -> None:
        self.views = views

    def apply(
        self, tx: Any, before: TaskState, after: TaskState, recorded: Sequence[RecordedEvent]
    ) -> None:
        new = entries_of(after, [(r.position, task_event(r)) for r in recorded])
        if leaves_feed(before, after):
            self.views.drop_from_feed(tx, after.task_id)
        # What feed_after keeps: the task's earlier entries stay unless it became a tombstone.
        added = feed_after([], before, after, new)
        if added:
            self.views.add_to_feed(tx, added)
