"""The composition root: the one place that builds the backend, the projections, the command
handler, the group-commit writer, the read pool and the service, and takes them down again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.settings import is_database_url
from ledger.commands import AnyCommand
from ledger.decider import fold
from ledger.handler import CommandHandler, CommandSource
from ledger.log import Backend, RecordedEvent, stream_id_for, task_events
from ledger.sqlite import SqliteBackend
from ledger.state import TaskState
from projections.checkpoints import CHECKPOINT_EVERY, CheckpointProjection, state_at
from projections.feed import FeedProjection
from projections.queue import QueueProjection
from projections.tasks import TasksProjection
from projections.webhooks import OutboxProjection, SubscriptionsProjection

if TYPE_CHECKING:
    from api.dispatch import Dispatcher
    from api.service import TaskLedger
    from api.settings import Settings


def open_backend(
    db: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
) -> Backend:
    """The backend ``db`` names: a ``postgresql://`` URL opens the PostgreSQL backend (its
    tables created in the URL's schema on first use), anything else is a SQLite file (created
    with its schema if new). ``synchronous`` is SQLite's; PostgreSQL commits with its own
    ``synchronous_commit`` (on by default: every commit is flushed)."""
    if is_database_url(db):
        from ledger.postgres import PostgresBackend  # psycopg is loaded only when used

        return PostgresBackend(str(db), timeout=busy_timeout_ms / 1000)
    return SqliteBackend(db, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)


def database_name(db: str | Path) -> str:
    """``db`` as messages name it: a file's path, or a URL without its password."""
    if isinstance(db, str) and is_database_url(db):
        from ledger.postgres.connection import redact

        return redact(db)
    return str(db)


class Store:
    """The ledger on one backend (the embedded SQLite file by default): the log, the read
    models' views, the application's records, the inline projections and the command handler
    that writes to all of them in one transaction. Synchronous: the CLI and tests use it as is;
    the service drives it through the writer and the read pool."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        clock: Callable[[], datetime] | None = None,
        backend: Backend | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.backend: Backend = backend or open_backend(
            path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms
        )
        #: The database: a SQLite file's path or a PostgreSQL URL.
        self.db: str | Path = path
        #: ``db`` as messages name it (no password).
        self.name = database_name(path)
        self.log = self.backend.log
        self.views = self.backend.views
        self.records = self.backend.records
        self.webhooks = self.backend.webhooks
        self.tasks = TasksProjection(self.views)
        self.queue = QueueProjection(self.views)
        self.checkpoints = CheckpointProjection(self.views, checkpoint_every)
        self.feed = FeedProjection(self.views)
        self.subscriptions = SubscriptionsProjection(self.webhooks)
        self.outbox = OutboxProjection(self.webhooks)
        self.handler = CommandHandler(
            self.log,
            self.tasks,
            [self.tasks, self.queue, self.checkpoints, self.feed, self.outbox],
            clock=clock,
            subscriptions=self.subscriptions,
            subscription_projections=[self.subscriptions],
        )

    @property
    def path(self) -> Path:
        """The SQLite file (TypeError on PostgreSQL, which has none)."""
        if is_database_url(self.db):
            raise TypeError(f"{self.name} is a PostgreSQL database, not a file")
        return Path(self.db)

    @property
    def is_postgres(self) -> bool:
        return is_database_url(self.db)

    def state(self, task_id: str) -> TaskState | None:
        """The projected state of a task (one indexed row), or None if it was never created."""
        return self.views.load_task(task_id)

    def replay(self, task_id: str, *, until_version: int | None = None) -> TaskState | None:
        """The task's state folded afresh from all its events (up to ``until_version``): the
        truth the projections and checkpoints are checked against."""
        events = self.log.read_stream(stream_id_for(task_id), until_version=until_version)
        return fold(task_events(events)) if events else None

    def state_at(self, task_id: str, version: int) -> TaskState | None:
        """The task's state after its ``version``-th event, folded on from its latest
        checkpoint: at most ``checkpoint_every - 1`` events read, however long the stream."""
        return state_at(self.log, self.views, task_id, version)

    def version(self, task_id: str) -> int:
        """How many events the task's stream holds (0: never created)."""
        return self.log.stream_version(stream_id_for(task_id))

    def version_at(self, task_id: str, when: datetime) -> int:
        """The task's last version recorded at or before ``when`` (0: none)."""
        return self.log.version_at(stream_id_for(task_id), when)

    def history(
        self, task_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        """The task's events after version ``after``, oldest first, at most ``limit``."""
        return self.log.read_stream(stream_id_for(task_id), after=after, limit=limit)

    def claim_source(self, make_command: Callable[[str], AnyCommand | None]) -> CommandSource:
        """A command source that picks the head of the queue inside the write transaction
        (``make_command`` may still decline it by returning None)."""

        def pick(tx: Any) -> AnyCommand | None:
            task_id = self.views.queue_head(tx=tx)
            return make_command(task_id) if task_id is not None else None

        return pick

    def close(self) -> None:
        self.backend.close()


def open_service(settings: Settings) -> TaskLedger:
    """The service over the database of ``settings`` (``db_url`` or ``db_path``), its writer
    thread and read pool running."""
    from api.fetch import UrlFetcher
    from api.groupcommit import Writer
    from api.keys import Gate, RateLimiter
    from api.metrics import BatchMetrics
    from api.readpool import ReadPool
    from api.service import TaskLedger, now
    from api.settings import database_of

    store = Store(database_of(settings), synchronous=settings.synchronous, clock=now)
    writer = Writer(store.handler, park_limit=settings.park_ms / 1000)
    writer.listen(BatchMetrics(writer))
    writer.start()
    limiter = None
    if settings.rate_limit_per_second:
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    service = TaskLedger(store, writer, ReadPool(), Gate(store.records, limiter), settings)
    service.fetcher = UrlFetcher(
        max_bytes=settings.max_body_bytes,
        timeout=settings.fetch_timeout,
        allow_private=settings.allow_private_fetch,
    )
    return service


def start_dispatcher(service: TaskLedger) -> Dispatcher:
    """The webhook dispatcher of this process, started and told when deliveries may be due:
    by the writer after a batch that wrote some, by the backend when another process commits
    (PostgreSQL), and by the service when a retry is asked for."""
    from api.dispatch import Dispatcher

    dispatcher = Dispatcher(service)
    dispatcher.start()
    service.writer.listen(dispatcher.committed)
    service.store.log.listen(dispatcher.wake)
    service.wake_dispatcher = dispatcher.wake
    return dispatcher


def close_service(service: TaskLedger) -> None:
    if service.fetcher is not None:
        service.fetcher.close()
    service.watch.close()
    service.reads.close()
    service.writer.stop()
    service.store.close()
