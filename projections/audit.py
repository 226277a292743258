"""Checking the read models against the log, and rebuilding them from it.

* ``verify`` walks the log twice: in position order to check the hash chain, and stream by stream
  to fold every task afresh and compare it with its stored ``tasks`` row, ``queue`` entry and
  ``feed`` entries. Memory stays flat: one stream's events at a time.
  Every checkpoint (``projections.checkpoints``) is compared with the fold at its version on
  the same walk.
* ``rebuild`` drops the projections (task rows, queue, feed entries, checkpoints) and writes
  them again from the same stream-by-stream fold, in one transaction.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from ledger import codec
from ledger import webhooks as hooks
from ledger.chain import GENESIS, chain_hash
from ledger.decider import evolve, initial_state
from ledger.log import EventLog, FeedEntry, TaskViews, WebhookStore, task_id_of
from ledger.state import TaskState
from projections.checkpoints import CHECKPOINT_EVERY
from projections.feed import entries_of, feed_after
from projections.queue import queue_position

Progress = Callable[[int], None]
S = TypeVar("S", TaskState, hooks.WebhookState)


@dataclass(frozen=True)
class Difference:
    """One thing ``verify`` found wrong. ``kind`` is chain, event, blob, task, queue, feed,
    checkpoint or webhook."""

    kind: str
    detail: str
    task_id: str | None = None
    position: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "task_id": self.task_id,
            "position": self.position,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Folded:
    state: TaskState
    queue_position: int | None
    #: The task's entries in its owner's feed (projections.feed).
    feed: list[FeedEntry]


class UndecodableEvent(Exception):
    """A stored event whose data is not an event any more (the log was edited by hand)."""

    def __init__(self, stream_id: str, position: int, error: Exception) -> None:
        super().__init__(f"event at position {position} cannot be decoded: {error}")
        self.task_id = task_id_of(stream_id)
        self.position = position


def fold_streams(
    log: EventLog,
    tx: Any = None,
    progress: Progress | None = None,
    on_bad_event: Callable[[UndecodableEvent], None] | None = None,
    each: Callable[[TaskState], None] | None = None,
    subscription: Callable[[hooks.WebhookState], None] | None = None,
) -> Iterator[Folded]:
    """Every task folded from its events, one stream at a time, with its queue position and its
    feed entries; ``each`` is handed the state after every event. A webhook subscription's
    stream is folded too, and its last state handed to ``subscription``.

    An event that cannot be decoded raises UndecodableEvent, or, with ``on_bad_event``, is
    reported there and skipped."""
    rows = log.iter_by_stream(tx=tx)
    current_stream: str | None = None
    state: TaskState | None = None
    hook: hooks.WebhookState | None = None
    position_in_queue: int | None = None
    feed: list[FeedEntry] = []
    for stream_id, position, data in rows:
        if stream_id != current_stream:
            if state is not None:
                yield Folded(state, position_in_queue, feed)
            if hook is not None and subscription is not None:
                subscription(hook)
            current_stream = stream_id
            state = hook = None
            if hooks.is_webhook_stream(stream_id):
                hook = hooks.WebhookState(webhook_id=hooks.webhook_id_of(stream_id))
            else:
                state = initial_state(task_id_of(stream_id))
            position_in_queue = None
            feed = []
        try:
            event = codec.decode_event(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            bad = UndecodableEvent(stream_id, position, exc)
            if on_bad_event is None:
                raise bad from None
            on_bad_event(bad)
            continue
        if hook is not None:
            if isinstance(event, hooks.WebhookEvent):
                hook = hooks.evolve(hook, event)
            elif on_bad_event is not None:
                on_bad_event(UndecodableEvent(stream_id, position, ValueError("a task event")))
            continue
        assert state is not None
        if isinstance(event, hooks.WebhookEvent):
            bad = UndecodableEvent(stream_id, position, ValueError("a webhook event"))
            if on_bad_event is None:
                raise bad
            on_bad_event(bad)
            continue
        after = evolve(state, event)
        position_in_queue = queue_position(state, after, position, position_in_queue)
        feed = feed_after(feed, state, after, entries_of(after, [(position, event)]))
        state = after
        if each is not None:
            each(state)
        if progress:
            progress(1)
    if state is not None:
        yield Folded(state, position_in_queue, feed)
    if hook is not None and subscription is not None:
        subscription(hook)


def check_chain(log: EventLog, tx: Any, progress: Progress | None = None) -> list[Difference]:
    """Recompute every event's hash. Each event is checked against the stored hash of the one
    before it, so an edit is reported at exactly the events it touched."""
    differences = []
    previous = GENESIS
    for row in log.iter_stored(tx=tx):
        if chain_hash(previous, **row.chained()) != row.hash:
            differences.append(
                Difference(
                    kind="chain",
                    position=row.position,
                    task_id=task_id_of(row.stream_id),
                    detail=f"event at position {row.position} does not match its hash "
                    "(its data or envelope was altered, or an event before it was removed)",
                )
            )
        previous = row.hash
        if progress:
            progress(1)
    return differences


def check_blobs(log: EventLog, tx: Any) -> list[Difference]:
    """Every stored blob must still hash to its address; an altered one is reported for each
    task that refers to it."""
    differences = []
    for sha, data, owners in log.iter_blobs(tx=tx):
        if hashlib.sha256(data).hexdigest() == sha:
            continue
        # A blob no task refers to any more is reported without a task.
        targets: list[str | None] = [*owners] or [None]
        for task_id in targets:
            differences.append(
                Difference(
                    "blob",
                    f"blob {sha} does not match its sha256 (its content was altered)",
                    task_id,
                )
            )
    return differences


def verify(
    log: EventLog,
    views: TaskViews,
    progress: Progress | None = None,
    *,
    webhooks: WebhookStore | None = None,
) -> list[Difference]:
    """Every difference between the log and the projections (the webhook subscriptions' too,
    given ``webhooks``), every broken chain link, every event that cannot be decoded and every
    blob that no longer matches its address; all read from one snapshot, so writers running
    meanwhile cause no false differences."""
    with log.read_snapshot() as tx:
        return _verify(log, views, tx, progress, webhooks)


def _verify(
    log: EventLog,
    views: TaskViews,
    tx: Any,
    progress: Progress | None = None,
    webhooks: WebhookStore | None = None,
) -> list[Difference]:
    differences = check_chain(log, tx, progress) + check_blobs(log, tx)

    def bad_event(error: UndecodableEvent) -> None:
        differences.append(Difference("event", str(error), error.task_id, error.position))

    # The rows and the streams come in the same (task id) order: one pass over both, a row at a
    # time, so memory stays flat however long the log.
    rows = iter(views.stored_states(tx=tx))
    row = next(rows, None)
    orphans: list[str] = []
    queued = dict(views.queue_entries(tx=tx))
    checkpoints = _CheckpointCheck(views.stored_checkpoints(tx=tx), differences)
    entries = _by_task(views.feed_entries(tx=tx))
    stored_feed = next(entries, None)
    feed_orphans: list[str] = []
    folded_hooks: dict[str, hooks.WebhookState] = {}

    def subscription(state: hooks.WebhookState) -> None:
        folded_hooks[state.webhook_id] = state

    for folded in fold_streams(log, tx, progress, bad_event, checkpoints.see, subscription):
        task_id = folded.state.task_id
        while stored_feed is not None and stored_feed[0] < task_id:
            feed_orphans.append(stored_feed[0])
            stored_feed = next(entries, None)
        kept: list[FeedEntry] = []
        if stored_feed is not None and stored_feed[0] == task_id:
            kept, stored_feed = stored_feed[1], next(entries, None)
        if kept != folded.feed:
            differences.append(Difference("feed", _feed_diff(kept, folded.feed), task_id))
        while row is not None and row[0] < task_id:
            orphans.append(row[0])
            row = next(rows, None)
        stored = None
        if row is not None and row[0] == task_id:
            stored, row = row[1], next(rows, None)
        if stored is None:
            differences.append(Difference("task", "no row in the tasks projection", task_id))
        elif stored != folded.state:
            differences.append(
                Difference(
                    "task",
                    "tasks projection row differs from the fold of its events: "
                    + _diff(stored, folded.state),
                    task_id,
                )
            )
        position = queued.pop(task_id, None)
        if position != folded.queue_position:
            differences.append(
                Difference(
                    "queue",
                    f"queue position is {position}, the log says {folded.queue_position}",
                    task_id,
                )
            )
    reported = {d.task_id for d in differences if d.kind == "task"}
    for task_id, detail in views.stale_rows(tx=tx):
        if task_id not in reported:  # a row whose state is wrong has wrong columns too
            differences.append(Difference("task", f"tasks row's columns: {detail}", task_id))
    while row is not None:
        orphans.append(row[0])
        row = next(rows, None)
    for task_id in orphans:
        differences.append(Difference("task", "tasks projection row without events", task_id))
    for task_id in sorted(queued):
        differences.append(Difference("queue", "queue entry without events", task_id))
    while stored_feed is not None:
        feed_orphans.append(stored_feed[0])
        stored_feed = next(entries, None)
    for task_id in feed_orphans:
        differences.append(Difference("feed", "feed entries without events", task_id))
    checkpoints.finish()
    if webhooks is not None:
        differences += _check_webhooks(webhooks, tx, folded_hooks)
    return differences


def _check_webhooks(
    webhooks: WebhookStore, tx: Any, folded: dict[str, hooks.WebhookState]
) -> list[Difference]:
    """Each subscription row against the fold of its stream."""
    differences = []
    for stored in webhooks.stored_webhooks(tx=tx):
        want = folded.pop(stored.webhook_id, None)
        if want is None:
            detail = f"webhook {stored.webhook_id}: a subscription row without events"
        elif want != stored:
            detail = f"webhook {stored.webhook_id}: " + _diff(stored, want)
        else:
            continue
        differences.append(Difference("webhook", detail))
    for webhook_id in sorted(folded):
        differences.append(Difference("webhook", f"webhook {webhook_id}: no subscription row"))
    return differences


class _CheckpointCheck:
    """Walks the stored checkpoints (in task id and version order) beside the fold of the
    streams (the same order), comparing each with the state the fold reaches at its version."""

    def __init__(
        self, stored: Iterator[tuple[str, int, TaskState]], differences: list[Difference]
    ) -> None:
        self._stored = stored
        self._next = next(stored, None)
        self._differences = differences

    def see(self, state: TaskState) -> None:
        here = (state.task_id, state.version)
        while self._next is not None and self._next[:2] <= here:
            (task_id, version, checkpoint), self._next = self._next, next(self._stored, None)
            if (task_id, version) < here:
                self._orphan(task_id, version)
            elif checkpoint != state:
                self._differences.append(
                    Difference(
                        "checkpoint",
                        f"checkpoint at version {version} differs from the fold of its "
                        "events: " + _diff(checkpoint, state),
                        task_id,
                    )
                )

    def finish(self) -> None:
        while self._next is not None:
            (task_id, version, _), self._next = self._next, next(self._stored, None)
            self._orphan(task_id, version)

    def _orphan(self, task_id: str, version: int) -> None:
        self._differences.append(
            Difference(
                "checkpoint",
                f"checkpoint at version {version} without an event at that version",
                task_id,
            )
        )


def _by_task(entries: Iterator[FeedEntry]) -> Iterator[tuple[str, list[FeedEntry]]]:
    """Feed entries (in task id order) grouped by task: one task's at a time."""
    for task_id, group in itertools.groupby(entries, key=lambda e: e.task_id):
        yield task_id, list(group)


def _feed_diff(stored: list[FeedEntry], folded: list[FeedEntry]) -> str:
    have = {e.position: e for e in stored}
    want = {e.position: e for e in folded}
    parts = []
    missing = sorted(want.keys() - have.keys())
    extra = sorted(have.keys() - want.keys())
    if missing:
        parts.append(f"missing at positions {missing}")
    if extra:
        parts.append(f"not in the log's feed at positions {extra}")
    for position in sorted(have.keys() & want.keys()):
        if have[position] != want[position]:
            parts.append(
                f"at position {position} stored {have[position]!r}, the log says {want[position]!r}"
            )
    return "feed entries differ from the log: " + "; ".join(parts)


def _diff(stored: S, folded: S) -> str:
    """The fields in which a stored state (a task's, a subscription's) differs from the fold."""
    fields = [
        f"{name}: stored {getattr(stored, name)!r}, log {getattr(folded, name)!r}"
        for name in stored.__struct_fields__
        if getattr(stored, name) != getattr(folded, name)
    ]
    return "; ".join(fields)


def rebuild(
    log: EventLog,
    views: TaskViews,
    progress: Progress | None = None,
    *,
    checkpoint_every: int = CHECKPOINT_EVERY,
    webhooks: WebhookStore | None = None,
) -> int:
    """Drop and rebuild the tasks, queue, feed and checkpoint projections (and, given
    ``webhooks``, the subscription rows; never the deliveries, which are not a projection) from
    the log in one transaction (or inside the caller's, if one is open); returns how many tasks
    were written."""
    count = 0
    with log.transaction() as tx:
        views.clear(tx)
        saved = None
        if webhooks is not None:
            webhooks.clear_webhooks(tx)
            saved = functools.partial(webhooks.save_webhook, tx)

        def keep(state: TaskState) -> None:
            if state.version % checkpoint_every == 0:
                views.save_checkpoint(tx, state)

        for folded in fold_streams(log, tx, progress, each=keep, subscription=saved):
            views.save_task(tx, folded.state)
            if folded.queue_position is not None:
                views.enqueue(tx, folded.state.task_id, folded.queue_position)
            if folded.feed:
                views.add_to_feed(tx, folded.feed)
            count += 1
    return count
