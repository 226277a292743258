"""Live reads: what wakes the readers that wait in this process for the log to move (an open
event stream, a long-polling claim), what tells them their key was revoked, and how many streams
one key may hold open.

A waiting reader does not poll. ``Watch`` keeps events that are replaced by fresh ones each time
they fire: ``appended()`` (this process committed events), ``appended(owner)`` (... events of
that owner's tasks: a user's stream is not woken by other users' commits) and ``work`` (a task
may have become claimable). The group-commit writer calls ``Watch.committed`` after every batch,
from its thread, and the watch fires them on the event loop. A reader takes the current event
*before* it reads, then waits on it: a commit between its read and its wait has already set the
event it holds, so no wake-up is missed, and a batch that appended nothing wakes nobody.

Other processes on the same database (``serve --workers N``, separate ``serve`` processes, other
nodes on one PostgreSQL database) do not call this process's writer. While anyone waits here,
one background task (``Watch._run``) reads the log's last position every
``OTHER_PROCESSES_SECONDS`` and wakes everyone when events other than this process's own were
appended since its last look: one indexed read per interval for the whole process, not one per
waiting reader. A backend that hears of other processes' commits (``EventLog.listen``:
PostgreSQL's LISTEN/NOTIFY) nudges that task to look at once, so a claim waiting on one node
wakes within milliseconds of a create on another. The same task re-reads, every
``KEY_CHECK_SECONDS``, the keys that hold a stream or a claim open, and sets each revoked one's
``Hold.revoked``: a stream ends, a waiting claim answers 401.

``Follow`` is one open stream of a caller's feed: a page of events whenever the log moved, an
empty page after ``KEEP_ALIVE_SECONDS`` of quiet, and the end once the key is revoked. Each
stream holds one of its key's slots (``Settings.max_streams_per_key`` per process;
``TooManyStreams`` past it) until ``close``, which the HTTP adapter calls however the response
ends. Nothing here imports Litestar.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog

from api.keys import is_active
from api.readpool import ReadPool
from api.refusals import TooManyStreams
from ledger.handler import Outcome
from ledger.log import EventLog, RecordedEvent, Records
from ledger.state import TaskState
from projections.queue import claimable

log = structlog.get_logger("taskledger.live")

#: How often the events other processes append are looked for while someone waits.
OTHER_PROCESSES_SECONDS = 0.5
#: How often the keys of open streams and waiting claims are re-read.
KEY_CHECK_SECONDS = 1.0
#: An idle stream's keep-alive comment comes this long after the last thing it sent.
KEEP_ALIVE_SECONDS = 15.0
#: The most events one read of a stream takes.
PAGE = 500


class Hold:
    """One reader waiting in this process (an open stream, a long-polling claim) for a key;
    ``revoked`` is set once the watch has found the key revoked. ``close`` is idempotent."""

    def __init__(self, watch: Watch, key_id: str, stream: bool) -> None:
        self.key_id = key_id
        self.stream = stream
        self.revoked = asyncio.Event()
        self._watch = watch
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self._watch._release(self)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Watch:
    """The wake-ups, key re-checks and stream slots of one process (see the module's doc)."""

    def __init__(
        self,
        reads: ReadPool,
        log: EventLog,
        records: Records,
        *,
        max_streams_per_key: int,
        other_processes: float = OTHER_PROCESSES_SECONDS,
        key_check: float = KEY_CHECK_SECONDS,
    ) -> None:
        self._reads = reads
        self._log = log
        self._records = records
        self.max_streams_per_key = max_streams_per_key
        self.other_processes = other_processes
        self.key_check = key_check
        self._appended = asyncio.Event()
        #: Per owner, while one of their streams waits: taken out and set when it fires.
        self._owners: dict[str, asyncio.Event] = {}
        self._work = asyncio.Event()
        self._holds: dict[str, set[Hold]] = {}
        self._streams: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        #: The log's last position at the watch's last look, and the positions this process has
        #: appended since (while anyone waits): what lies between them and is not ours, another
        #: process appended.
        self._looked = 0
        self._ours: list[int] = []
        #: Set (on the loop) when the backend reports a commit: the look runs at once.
        self._nudge = asyncio.Event()
        self._stop_listening = log.listen(self._heard)

    # -- what a reader takes before it reads, and waits on after ---------------------------

    def appended(self, owner: str | None = None) -> asyncio.Event:
        """Set once events are appended after this call (by this process at once; by others
        within ``other_processes`` seconds): any event, or with ``owner`` an event of one of
        that owner's tasks (another process's appends wake every owner: their owners are not
        known without reading them)."""
        if owner is None:
            return self._appended
        return self._owners.setdefault(owner, asyncio.Event())

    def work(self) -> asyncio.Event:
        """Set once a task may have become claimable after this call."""
        return self._work

    # -- holds and stream slots -------------------------------------------------------------

    def hold(self, key_id: str, *, stream: bool = False) -> Hold:
        """Register a waiting reader of ``key_id`` (on the event loop). A stream takes one of
        the key's slots: TooManyStreams if they are all taken."""
        if stream:
            if self._streams.get(key_id, 0) >= self.max_streams_per_key:
                raise TooManyStreams(self.max_streams_per_key)
            self._streams[key_id] = self._streams.get(key_id, 0) + 1
        held = Hold(self, key_id, stream)
        self._holds.setdefault(key_id, set()).add(held)
        self._loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = self._loop.create_task(self._run())
        return held

    def streams_open(self, key_id: str) -> int:
        return self._streams.get(key_id, 0)

    def _release(self, held: Hold) -> None:
        holds = self._holds.get(held.key_id)
        if holds is not None:
            holds.discard(held)
            if not holds:
                del self._holds[held.key_id]
        if not self._holds and self._task is not None:
            # Nobody waits: stop looking. The next hold starts a look at once, which sees
            # whatever was appended meanwhile (``committed`` wakes no one while nobody waits).
            self._task.cancel()
            self._task = None
        if held.stream:
            left = self._streams.get(held.key_id, 0) - 1
            if left > 0:
                self._streams[held.key_id] = left
            else:
                self._streams.pop(held.key_id, None)

    # -- wake-ups ---------------------------------------------------------------------------

    def committed(self, results: Sequence[Any]) -> None:
        """The writer's listener, called on its thread after each batch: wake this process's
        waiting readers if the batch appended events (``results`` are Outcomes or errors)."""
        loop = self._loop
        if loop is None or not self._holds:
            return  # nobody waits: nobody to wake
        positions: list[int] = []
        work, owners = False, set()
        for result in results:
            if (
                isinstance(result, Outcome)
                and result.recorded
                and isinstance(result.after, TaskState)
            ):
                positions += [r.position for r in result.recorded]
                work = work or claimable(result.after)
                owners.add(result.after.owner)
        if positions:
            try:
                loop.call_soon_threadsafe(self._wake, positions, work, owners)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

    def _heard(self) -> None:
        """The backend's callback, on its thread: some process committed events."""
        loop = self._loop
        if loop is None or self._task is None:
            return  # nobody waits; the next hold looks at once anyway
        try:
            loop.call_soon_threadsafe(self._nudge.set)
        except RuntimeError:  # the loop has closed
            pass

    def _wake(self, positions: list[int], work: bool, owners: set[str | None]) -> None:
        self._ours += positions
        self._fire(work, owners)

    def _fire(self, work: bool, owners: set[str | None] | None = None) -> None:
        """Fire ``appended``, the given owners' events (every owner's if None) and, with
        ``work``, the claims' event."""
        appended, self._appended = self._appended, asyncio.Event()
        appended.set()
        if owners is None:
            fired, self._owners = list(self._owners.values()), {}
        else:
            fired = [e for e in (self._owners.pop(o, None) for o in owners if o) if e is not None]
        for event in fired:
            event.set()
        if work:
            changed, self._work = self._work, asyncio.Event()
            changed.set()

    async def _run(self) -> None:
        """While anyone waits: the other processes' appends and the holders' keys. The first
        look is at once."""
        next_check = time.monotonic() + self.key_check
        try:
            while True:
                keys: list[str] = []
                if time.monotonic() >= next_check:
                    keys = list(self._holds)
                    next_check = time.monotonic() + self.key_check
                try:
                    head, revoked = await self._reads.run(self._look, keys)
                except Exception as exc:  # the next round tries again
                    log.warning("watch_failed", error_type=type(exc).__name__, error=str(exc))
                else:
                    if self._moved_elsewhere(head):  # another process appended: wake all
                        self._fire(work=True)
                    for key_id in revoked:
                        for held in self._holds.get(key_id, ()):
                            held.revoked.set()
                try:
                    await asyncio.wait_for(self._nudge.wait(), self.other_processes)
                except TimeoutError:
                    pass
                self._nudge.clear()
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _moved_elsewhere(self, head: int) -> bool:
        """Whether events up to ``head`` (the log's last position, just read) were appended
        since the last look by anyone but this process, whose own have woken their readers
        already. Positions are gapless, so it is a count; a gap would only wake readers for
        nothing, never miss one. (Comparing ``head`` with the last position this process wrote
        would miss another process's event followed by one of ours.)"""
        if head <= self._looked:
            return False
        ours = sum(1 for p in self._ours if self._looked < p <= head)
        elsewhere = head - self._looked - ours
        self._ours = [p for p in self._ours if p > head]
        self._looked = head
        return elsewhere > 0

    def _look(self, keys: list[str]) -> tuple[int, list[str]]:
        """On a reader thread: the log's last position, and which of ``keys`` are revoked."""
        return self._log.last_position(), [k for k in keys if not is_active(self._records, k)]

    def close(self) -> None:
        self._stop_listening()
        if self._task is not None:
            self._task.cancel()
            self._task = None


async def first_of(changed: asyncio.Event, revoked: asyncio.Event, timeout: float) -> bool:
    """Wait until ``changed`` or ``revoked`` is set, or ``timeout`` seconds; whether
    ``changed`` is set."""
    if not (changed.is_set() or revoked.is_set()):
        waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(revoked.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
    return changed.is_set()


#: A stream's read, run on a reader thread: ``cursor`` -> (the log's last position read before
#: the page, the page of events after ``cursor``).
PageReader = Callable[[int], tuple[int, list[RecordedEvent]]]


class Follow:
    """One open stream of a caller's feed (``TaskLedger.follow``)."""

    def __init__(
        self,
        reads: ReadPool,
        watch: Watch,
        held: Hold,
        read_page: PageReader,
        after: int,
        owner: str | None,
    ) -> None:
        self._reads = reads
        self._watch = watch
        self._held = held
        self._read_page = read_page
        self._after = after
        #: Whose events the stream shows (None: everyone's).
        self._owner = owner

    @property
    def revoked(self) -> bool:
        return self._held.revoked.is_set()

    def close(self) -> None:
        """Give the stream's slot back (idempotent)."""
        self._held.close()

    async def pages(self) -> AsyncIterator[list[RecordedEvent]]:
        """Pages of events after the cursor, in position order, each as soon as the log has
        moved; an empty page after ``KEEP_ALIVE_SECONDS`` without one; the end once the key is
        revoked. The stream reads only when woken (by an append of its owner's, or any for an
        admin's), never on a timer.

        A page shorter than ``PAGE`` holds every event after the cursor up to the log's last
        position read *before* it (positions are handed out in commit order), so the cursor
        moves there: the next read starts past the events that were not the caller's, even
        when none was."""
        cursor, quiet_since, stale = self._after, time.monotonic(), True
        try:
            while not self.revoked:
                changed = self._watch.appended(self._owner)
                if stale:
                    head, found = await self._reads.run(self._read_page, cursor)
                    if found:
                        yield found
                        cursor, quiet_since = found[-1].position, time.monotonic()
                        if len(found) >= PAGE:
                            continue
                    cursor = max(cursor, head)
                left = quiet_since + KEEP_ALIVE_SECONDS - time.monotonic()
                if left <= 0:
                    yield []
                    quiet_since, stale = time.monotonic(), False
                    continue
                stale = await first_of(changed, self._held.revoked, left)
        finally:
            self.close()
