"""The storage port: what the rest of taskledger needs from a database, as protocols.

The domain never sees SQL: the decider works on events, a backend stores them. A backend is
three objects: the ``EventLog`` (events, blobs, transactions, the write turn), the
``TaskViews`` (the read models' tables: one row per task, the claim queue, the event feed,
checkpoints of task states) and the ``Records`` (API keys, idempotency outcomes and the secret
that signs file links). The embedded SQLite backend lives in ``ledger.sqlite``; a backend is
done when it passes the contract suite in ``tests/backends/``. ``tx`` is a backend's
transaction handle: what ``transaction()`` yields; a read given ``tx=None`` uses a read
connection of the backend's choosing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ledger.codec import LogEvent
from ledger.events import AnyEvent, BlobRef
from ledger.state import TaskState
from ledger.webhooks import WebhookEvent, WebhookState


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
    event: LogEvent
    #: The hash chain link: sha256 over the previous hash, this envelope and the event's data.
    hash: str = ""


def task_event(recorded: RecordedEvent) -> AnyEvent:
    """The event of a task stream's ``recorded`` (a webhook event there would be a bug)."""
    event = recorded.event
    if isinstance(event, WebhookEvent):
        raise ValueError(f"{recorded.stream_id} holds a webhook event at {recorded.position}")
    return event


def task_events(recorded: Iterable[RecordedEvent]) -> Iterator[AnyEvent]:
    """The events of a task stream's ``recorded`` events, in order."""
    return map(task_event, recorded)


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event row exactly as stored (its data still encoded): what the hash chain covers,
    what ``verify`` rechecks and what an export carries."""

    position: int
    stream_id: str
    version: int
    type: str
    data: str
    recorded_at: str
    actor_key_id: str | None
    actor_role: str
    request_id: str | None
    idempotency_key: str | None
    hash: str

    def chained(self) -> dict[str, Any]:  # Any: the values are typed by the fields above
        """The fields ``ledger.chain.chain_hash`` covers (everything but the hash)."""
        fields = msgspec.structs.asdict(self)
        del fields["hash"]
        return fields


class BlobReader(Protocol):
    """One blob read in order, piece by piece (``EventLog.open_blob``), with bounded memory:
    only the piece asked for is read. Between pieces a reader may hold on to the database (a
    read snapshot) so that the next piece is cheap to find, but only briefly: ``release`` lets
    go of it at once (call it when the consumer of the pieces stalls), and the next ``read``
    takes it again where it left off. Its calls may come from any thread."""

    def read(self, size: int) -> bytes | None:
        """The next piece: up to ``size`` bytes, fewer only at the end (b"" past it); None if
        the blob is not there (purged while the reader had let go of it, or never stored)."""
        ...

    def release(self) -> None:
        """Let go of the database until the next read."""
        ...

    def close(self) -> None:
        """Done: a read after it raises ValueError; closing again does nothing."""
        ...


class EventLog(Protocol):
    """An append-only log of events in streams, with a global position order, and the blobs
    the events refer to."""

    def write_turn(self) -> AbstractContextManager[None]:
        """This process's turn to write (other processes on the same database wait); a
        transaction opened inside it does not wait again."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """An exclusive write transaction; yields the handle the other calls take as ``tx``."""
        ...

    def savepoint(self, tx: Any, name: str) -> AbstractContextManager[None]:
        """A nested unit of ``tx`` that undoes only its own writes on error; raises
        TransactionRolledBack if the database has abandoned the whole of ``tx``."""
        ...

    def read_snapshot(self) -> AbstractContextManager[Any]:
        """A read handle on which every read sees the database as of one moment."""
        ...

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[LogEvent],
        envelope: Envelope,
        *,
        tx: Any = None,
    ) -> list[RecordedEvent]:
        """Append ``events`` after ``expected_version``; ConcurrencyConflict if it is stale."""
        ...

    def read_stream(
        self,
        stream_id: str,
        *,
        after: int = 0,
        until_version: int | None = None,
        limit: int | None = None,
        tx: Any = None,
    ) -> list[RecordedEvent]:
        """The stream's events in version order: those after version ``after`` and up to
        ``until_version``, at most ``limit`` of them. Its cost follows the events it returns,
        not the stream's length."""
        ...

    def stream_version(self, stream_id: str, *, tx: Any = None) -> int:
        """How many events the stream holds (its last version; 0 for no stream)."""
        ...

    def version_at(self, stream_id: str, when: datetime, *, tx: Any = None) -> int:
        """The last version of the stream recorded at or before ``when`` (0 if none was). The
        events recorded by then are a prefix of the stream: recorded_at never goes backwards
        along the log. Its cost grows with the logarithm of the stream's length at most."""
        ...

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]: ...

    def iter_all(self, after: int = 0, batch: int = 10_000) -> Iterator[RecordedEvent]: ...

    def iter_stored(self, after: int = 0, *, tx: Any = None) -> Iterator[StoredEvent]:
        """Stored event rows in position order, as they are on disk."""
        ...

    def iter_by_stream(self, *, tx: Any = None) -> Iterator[tuple[str, int, str]]:
        """``(stream_id, position, data)`` of every event, stream by stream, each stream in
        version order: what folding every task afresh walks."""
        ...

    def iter_data(self, *, tx: Any = None) -> Iterator[tuple[str, str]]:
        """``(stream_id, data)`` of every event in position order: what a new projection
        replays."""
        ...

    def last_position(self) -> int: ...

    def put_blob(self, task_id: str, data: bytes, *, tx: Any) -> BlobRef: ...

    def get_blob(self, ref: BlobRef, *, tx: Any = None) -> bytes | None: ...

    def read_blob(self, ref: BlobRef, offset: int, size: int, *, tx: Any = None) -> bytes | None:
        """A piece of the blob: up to ``size`` bytes from ``offset`` (fewer only at its end, none
        past it), without reading the rest of it into memory; None once the blob is purged.
        Each call is a read of its own: a blob streamed piece by piece holds nothing between
        pieces, and since a blob is immutable (content-addressed) the pieces are always of the
        same bytes, purged or not."""
        ...

    def open_blob(self, ref: BlobRef, offset: int = 0) -> BlobReader:
        """A reader of the blob from ``offset`` on (nothing is read until its first ``read``);
        closed by the caller (or with the log)."""
        ...

    def purge_blobs(self, task_id: str, *, tx: Any) -> int:
        """Drop the task's references and every blob no other task refers to."""
        ...

    def iter_blobs(self, *, tx: Any = None) -> Iterator[tuple[str, bytes, list[str]]]:
        """Every stored blob: its address, its bytes and the tasks that refer to it."""
        ...

    def check_writable(self) -> None:
        """Raise StorageUnavailable unless the database answers and would accept a write now
        (reachable, not read-only, not full as far as the backend can tell without writing):
        what ``GET /ready`` asks. Cheap, and it leaves nothing behind (a rolled-back probe)."""
        ...

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on a thread of the backend's) soon after another process (another
        instance of this log) commits events to it, if the backend can tell (PostgreSQL's
        LISTEN/NOTIFY); a backend that cannot never calls it, and its readers look for
        themselves. This instance's own commits are never reported: its writer knows them.
        Returns a function that stops listening."""
        ...

    def close(self) -> None: ...


class TaskQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A page of tasks, newest first: those visible at ``at`` (see decider.visible_until)."""

    at: datetime
    owner: str | None = None
    limit: int | None = None
    offset: int = 0
    start: datetime | None = None
    end: datetime | None = None


class FeedQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Events in position order after a cursor: all, one owner's tasks, some types, one task.

    Without ``owner`` it reads the log itself: every event, deleted and expired tasks' included
    (what an admin audits). With ``owner`` it reads that owner's feed entries (``FeedEntry``): a
    deleted or expired task's events have left it, all but the tombstone; and with
    ``visible_at`` too, the events of a task no longer visible at that time are left out (a
    finished task past its ``expires_at`` that the sweeper has not yet recorded as expired, see
    decider.visible_until)."""

    after: int = 0
    limit: int = 100
    owner: str | None = None
    types: tuple[str, ...] = ()
    task_id: str | None = None
    visible_at: datetime | None = None


class FeedEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An event in its owner's feed: the feed projection (``projections.feed``) keeps one per
    event of a live task, and only the tombstone of a deleted or expired one."""

    position: int
    owner: str
    task_id: str
    type: str


class TaskViews(Protocol):
    """The read models' storage: one row per task holding its folded state (with the columns
    the queries need), the claim queue, the owners' feed entries, the event feed, and checkpoints
    of task states."""

    def load_task(self, task_id: str, *, tx: Any = None) -> TaskState | None: ...

    def prefetch_tasks(self, tx: Any, task_ids: Sequence[str]) -> None:
        """A hint from the write transaction ``tx``: it is about to load these tasks. A backend
        whose every read is a round trip may read them all at once (and keep them for the rest
        of the transaction); one that reads in process ignores it."""
        ...

    def save_task(self, tx: Any, state: TaskState) -> None: ...

    def list_tasks(self, query: TaskQuery, *, tx: Any = None) -> list[TaskState]: ...

    def stored_states(self, *, tx: Any = None) -> Iterator[tuple[str, TaskState]]:
        """Every task row's state, in task id order (the order ``EventLog.iter_by_stream``
        gives the streams, so a check can walk both at once)."""
        ...

    def stale_rows(self, *, tx: Any = None) -> list[tuple[str, str]]:
        """``(task_id, what differs)`` for each task row whose query columns (owner, status,
        times, visibility, lease) no longer agree with the state it holds."""
        ...

    def due_leases(self, at: datetime, limit: int = 500) -> list[str]:
        """Tasks whose lease ran out at or before ``at``."""
        ...

    def due_expiries(self, at: datetime, limit: int = 500) -> list[str]:
        """Live tasks no longer visible at ``at``: finished and past expires_at."""
        ...

    def queue_head(self, *, tx: Any = None) -> str | None: ...

    def enqueue(self, tx: Any, task_id: str, position: int) -> None: ...

    def status_counts(self, *, tx: Any = None) -> dict[str, int]:
        """How many task rows (not gone: neither deleted nor expired) are in each status; a
        status no task is in is absent. An index-only count (the metrics' scrape)."""
        ...

    def queue_summary(self, *, tx: Any = None) -> tuple[int, datetime | None]:
        """How many tasks are claimable, and when the one at the head of the queue (the next
        claim's) was created (None for an empty queue)."""
        ...

    def dequeue(self, tx: Any, task_id: str) -> None: ...

    def queue_entries(self, *, tx: Any = None) -> list[tuple[str, int]]: ...

    def add_to_feed(self, tx: Any, entries: Sequence[FeedEntry]) -> None:
        """Put events in their owner's feed."""
        ...

    def drop_from_feed(self, tx: Any, task_id: str) -> None:
        """Take every entry of the task out of its owner's feed."""
        ...

    def feed_entries(self, *, tx: Any = None) -> Iterator[FeedEntry]:
        """Every feed entry, in task id order and each task's in position order (the order
        ``EventLog.iter_by_stream`` gives the streams, so a check can walk both at once)."""
        ...

    def feed(self, query: FeedQuery, *, tx: Any = None) -> list[RecordedEvent]:
        """A page of events after ``query.after`` in position order (see FeedQuery). One
        owner's page is a range of that owner's entries: its cost does not grow with the events
        of other owners."""
        ...

    def save_checkpoint(self, tx: Any, state: TaskState) -> None:
        """Keep ``state`` as its task's state after its ``state.version``-th event (a checkpoint
        time travel folds on from; see projections.checkpoints)."""
        ...

    def load_checkpoint(self, task_id: str, version: int, *, tx: Any = None) -> TaskState | None:
        """The task's latest checkpoint at or before ``version``, or None."""
        ...

    def stored_checkpoints(self, *, tx: Any = None) -> Iterator[tuple[str, int, TaskState]]:
        """``(task_id, version, state)`` of every checkpoint as stored, in task id order and
        each task's in version order (what ``verify`` walks beside the streams)."""
        ...

    def clear(self, tx: Any) -> None:
        """Empty the task rows, the queue, the feed entries and the checkpoints (before a
        rebuild)."""
        ...


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    owner: str
    role: str
    created_at: str
    revoked_at: str | None = None


class StoredOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a command answered, kept for a retry with the same Idempotency-Key."""

    fingerprint: str
    outcome: bytes
    #: Kept by an earlier version as raw response bytes, which cannot be replayed as an outcome:
    #: the request is done, and a retry with this key is refused rather than run again.
    legacy: bool = False


class Records(Protocol):
    """The application's own records: API keys (stored hashed), idempotency outcomes, and the
    secret that signs file links (one at a time; every process sharing the database reads the
    same one)."""

    def add_key(self, record: KeyRecord, key_hash: str) -> None:
        """Store a new key; DuplicateRecord if its id is taken (nothing is changed then)."""
        ...

    def find_key(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """The key's record and its stored hash."""
        ...

    def list_keys(self) -> list[KeyRecord]: ...

    def revoke_key(self, key_id: str, at: str) -> bool: ...

    def count_keys(self) -> int: ...

    def find_outcome(
        self, key_id: str, idempotency_key: str, *, tx: Any = None
    ) -> StoredOutcome | None: ...

    def record_outcome(
        self, tx: Any, key_id: str, idempotency_key: str, outcome: StoredOutcome, at: str
    ) -> None:
        """Keep ``outcome``; DuplicateRecord if this key already has one."""
        ...

    def url_secret(self) -> bytes:
        """The secret that signs file links: 32 random bytes, made and stored on first use
        (two instances asking at once get the same one) and the same until rotated."""
        ...

    def rotate_url_secret(self) -> bytes:
        """Replace the secret with a new random one, committed at once; returns it. Links
        signed with the old one no longer verify."""
        ...


#: A delivery's status: waiting for its next attempt, delivered (a 2xx), or given up on.
PENDING = "pending"
DELIVERED = "succeeded"
GAVE_UP = "failed"


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook message: a task event to one subscription (the outbox row written in the
    command's transaction), and where its attempts stand. ``delivery_id`` is the
    ``webhook-id`` every attempt sends, so a receiver can tell a retry from a new message."""

    delivery_id: str
    #: The subscription; ``default:<owner>`` for a task's own ``webhook_url``.
    webhook_id: str
    owner: str
    task_id: str
    #: The task's version after the event: the body is the task as it was then.
    version: int
    position: int
    event_type: str
    url: str
    created_at: datetime
    status: str = PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    finished_at: datetime | None = None


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try of a delivery: when, how long, the receiver's status (None: no answer), the
    error, and the first kilobyte of its answer."""

    attempt: int
    at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    response: str | None = None


class WebhookSecrets(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription's signing secret and, for a while after a rotation, the one before it."""

    secret: str
    previous: str | None = None
    previous_until: datetime | None = None


class WebhookStore(Protocol):
    """Webhooks' storage: the subscriptions (a projection of the ``webhook-`` streams), their
    signing secrets (records, never events), and the outbox of deliveries with their attempts
    (operational state the dispatcher leases and updates; never rebuilt from the log)."""

    def save_webhook(self, tx: Any, state: WebhookState) -> None: ...

    def load_webhook(self, webhook_id: str, *, tx: Any = None) -> WebhookState | None: ...

    def list_webhooks(self, owner: str | None, *, tx: Any = None) -> list[WebhookState]:
        """The subscriptions not deleted, oldest first: ``owner``'s own, or every one (None)."""
        ...

    def listening(self, tx: Any, owner: str) -> list[WebhookState]:
        """The active subscriptions that hear of ``owner``'s tasks (its own and the
        every-owner ones)."""
        ...

    def stored_webhooks(self, *, tx: Any = None) -> Iterator[WebhookState]:
        """Every subscription row, deleted ones too, in id order (what verify compares)."""
        ...

    def clear_webhooks(self, tx: Any) -> None:
        """Empty the subscription rows (before a rebuild); secrets and deliveries stay."""
        ...

    def set_secrets(self, tx: Any, webhook_id: str, secrets: WebhookSecrets) -> None: ...

    def secrets(self, webhook_id: str, *, tx: Any = None) -> WebhookSecrets | None: ...

    def add_deliveries(self, tx: Any, deliveries: Sequence[Delivery]) -> None:
        """Put deliveries in the outbox; one whose id is there already is left as it is."""
        ...

    def lease_deliveries(
        self, tx: Any, at: datetime, holder: str, until: datetime, limit: int
    ) -> list[Delivery]:
        """Take up to ``limit`` deliveries due at ``at`` (pending, next attempt at or before it,
        no lease or a lapsed one) for ``holder`` until ``until``, oldest first. A delivery waits
        while an earlier one of the same subscription and task is pending, so a receiver gets
        each task's events in order."""
        ...

    def finish_attempt(
        self,
        tx: Any,
        delivery_id: str,
        holder: str,
        attempt: DeliveryAttempt,
        *,
        status: str,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Record an attempt and where the delivery stands after it, and end the lease; False
        (nothing written) if ``holder`` no longer holds the lease. A retry asked for while the
        attempt was under way (``retry_delivery`` moved the delivery's next attempt past the
        attempt's ``at``) stands: unless the attempt delivered it, the delivery stays pending,
        due when the retry said."""
        ...

    def retry_delivery(self, tx: Any, delivery_id: str, at: datetime) -> Delivery | None:
        """Make a delivery pending again, due at ``at`` (one more attempt); None if none. A
        lease still running is kept: the attempt in flight is not sent again beside it, and its
        holder's ``finish_attempt`` still counts (and sets when the next attempt is due)."""
        ...

    def get_delivery(self, delivery_id: str, *, tx: Any = None) -> Delivery | None: ...

    def list_deliveries(
        self, webhook_id: str, *, after: int = 0, limit: int = 100, tx: Any = None
    ) -> list[Delivery]:
        """A subscription's deliveries in position order, after position ``after``."""
        ...

    def attempts(self, delivery_id: str, *, tx: Any = None) -> list[DeliveryAttempt]: ...

    def count_failure(self, tx: Any, webhook_id: str, failed: bool) -> int:
        """Count a delivery that ended (``failed``: given up on) toward the subscription's run of
        consecutive failed deliveries (a success ends the run); returns the run's length."""
        ...

    def next_due(self, *, tx: Any = None) -> datetime | None:
        """The earliest time a pending delivery is due (its next attempt or its lease's end),
        leaving out one waiting behind an earlier pending delivery of its subscription and
        task (``lease_deliveries`` would not take it: the earlier one's time is the one)."""
        ...


class Backend(Protocol):
    """A whole backend: its three parts, and moving the whole ledger in and out of it."""

    @property
    def log(self) -> EventLog: ...

    @property
    def views(self) -> TaskViews: ...

    @property
    def records(self) -> Records: ...

    @property
    def webhooks(self) -> WebhookStore: ...

    def export_records(self) -> Iterator[dict[str, object]]:
        """The whole log as records: a header, every stored event, every blob and blob
        reference, every API key (hashed), the webhooks' secrets, deliveries (not leased),
        attempts and failure runs, and a footer (event count and last hash) to tell a whole
        export from one cut short (see ``ledger.transfer``)."""
        ...

    def import_records(
        self,
        records: Iterable[dict[str, object]],
        *,
        tx: Any,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Load an export into this empty backend inside ``tx``, checking the hash chain and
        every blob; ImportRefused on the first fault (the transaction then writes nothing)."""
        ...

    def backup(self, destination: str | Path) -> None:
        """A consistent copy of the whole database as of one moment, taken while it runs."""
        ...

    def close(self) -> None: ...
