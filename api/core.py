"""The core of the application service: what every use case shares (see ``api.service``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec

from api import idempotency, metrics
from api.groupcommit import Writer
from api.keys import Gate
from api.live import Watch
from api.output import stored_fields, summary_of_stored
from api.policy import Caller, UseCase
from api.readpool import ReadPool
from api.refusals import IdempotencyMismatch
from api.settings import Settings
from ledger.errors import DuplicateRecord, TaskNotFound
from ledger.events import SUCCEEDED, BlobRef, OutputSummary
from ledger.handler import CommandSource, Outcome, Request
from ledger.log import Actor, Envelope, StoredOutcome
from ledger.state import TaskState

if TYPE_CHECKING:
    from api.composition import Store
    from api.fetch import Fetcher

R = TypeVar("R")

#: The fields of the current request's one log line (command, task_id, outcome, ...): the HTTP
#: adapter's request-log middleware gives each request a fresh dict; the service adds to it.
log_fields: ContextVar[dict[str, Any] | None] = ContextVar("taskledger_log_fields", default=None)


def note(**fields: Any) -> None:
    found = log_fields.get()
    if found is not None:
        found.update(fields)


def now() -> datetime:
    return datetime.now(UTC)


OCTET_STREAM = "application/octet-stream"
#: The pieces a file is streamed in: what one download holds in memory, besides the socket's
#: own buffers, however slowly its client reads.
PIECE = 256 * 1024
#: How long (seconds) a download waits for its client to take a piece before its blob reader
#: lets go of the database (ledger.log.BlobReader.release).
IDLE = 0.1
#: Outputs recorded before summaries whose summaries this process keeps (by blob and name).
SUMMARIES_KEPT = 4096


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """A task as a use case answers it: its state (with ``output_summary``, what answers show
    of an output besides its chunks) and, only when the answer shows the output's chunks (a
    Succeeded task read with them), its stored output.

    The service's reads for rendering (``get_as``, ``list_as``) leave the output's top-level
    values undecoded (``msgspec.Raw``, its JSON as stored: encoding copies it); ``get`` and
    ``list_tasks`` decode it; command results hold it as plain builtins."""

    state: TaskState
    output: dict[str, Any] | None = None


class InputGone(Exception):
    """A file's blob was purged (its task deleted or expired) while it was being sent: too late
    for a status; the adapter ends the answer short of its Content-Length."""


class Download(NamedTuple):
    """A file as a read answers it: its name, media type and size, and its bytes in pieces of
    at most ``PIECE`` bytes. The first piece is read with the task, so a file that is gone is
    refused before anything is sent; a file purged while it is sent ends its pieces with
    ``InputGone`` (the answer's Content-Length then tells its client it was cut short)."""

    name: str
    media_type: str
    size: int
    pieces: AsyncGenerator[bytes, None]


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """What complete and fail answer: the task afterwards and, only when ``claim_next`` was
    asked, the task claimed next for the same worker (None when none was waiting). ``next`` is
    unset when not asked, and in an outcome replayed for an Idempotency-Key (the key covers
    the finish, not the claim after it)."""

    task: TaskView
    next: TaskView | None | msgspec.UnsetType = msgspec.UNSET


class ServiceCore:
    """What every use case shares: the store, group commit, the read pool, the clock, the
    wake-ups of readers waiting for the log to move (``api.live.Watch``), and the one path a
    command takes (idempotency, envelope, group commit, result)."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        reads: ReadPool,
        gate: Gate,
        settings: Settings,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.store = store
        self.writer = writer
        self.reads = reads
        self.gate = gate
        self.settings = settings
        self.clock = clock
        #: Downloads a create's file given by URL (none: such creates are refused). The
        #: composition root sets it (``open_service``).
        self.fetcher: Fetcher | None = None
        #: Wakes the streams and long-polling claims waiting in this process: the writer tells
        #: it after each batch; it looks for other processes' appends and revoked keys itself.
        self.watch = Watch(
            reads, store.log, store.records, max_streams_per_key=settings.max_streams_per_key
        )
        writer.listen(self.watch.committed)
        #: Summaries worked out from outputs recorded before summaries were (immutable: a blob
        #: is content-addressed), so each such output is read once per process, not per read.
        self._summaries: dict[tuple[str, str | None], OutputSummary] = {}
        self._summaries_lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Caller:
        return self.gate.authenticate(authorization)

    def check_ready(self) -> None:
        """StorageUnavailable unless the database answers and would take a write now (a
        rolled-back probe in this process's write turn: ``EventLog.check_writable``)."""
        self.store.log.check_writable()

    # -- the command path ---------------------------------------------------------------------

    # -- what answers show of outputs and files --------------------------------------------

    def _read_view(self, state: TaskState, chunks: bool, tx: Any = None) -> TaskView:
        """The task as an answer shows it: the output's summary always (from the state; from
        the blob only for an output recorded before summaries were), the stored output only
        when ``chunks`` is asked for and the answer shows them (the task Succeeded), its
        values undecoded. A read that does not return chunks never reads the output."""
        state = self._summarised(state, tx)
        output = None
        if chunks and state.status == SUCCEEDED and state.output is not None:
            data = self.store.log.get_blob(state.output, tx=tx)
            output = stored_fields(data) if data else None
        return TaskView(state=state, output=output)

    def _summarised(self, state: TaskState, tx: Any = None) -> TaskState:
        """``state`` with its output's summary (worked out from the blob, once per process,
        for an output whose ``succeeded`` event has none; left None if the blob is gone)."""
        ref = state.output
        if ref is None or state.output_summary is not None:
            return state
        key = (ref.sha256, state.file_name)
        summary = self._summaries.get(key)
        if summary is None:
            data = self.store.log.get_blob(ref, tx=tx)
            if data is None:
                return state
            summary = summary_of_stored(data, state.file_name)
            with self._summaries_lock:
                if len(self._summaries) >= SUMMARIES_KEPT:
                    self._summaries.clear()
                self._summaries[key] = summary
        return msgspec.structs.replace(state, output_summary=summary)

    def _view(self, tx: Any, outcome: Outcome) -> TaskView:
        """The task after a command, its output (if the answer shows its chunks) read inside
        the transaction."""
        return self._read_view(outcome.after, True, tx)

    def _opened_input(self, state: TaskState | None) -> tuple[TaskState, bytes]:
        """The task and the first piece of its input (on the reader thread that checked the
        task); TaskNotFound if it has none or the blob is gone."""
        if state is None or state.file is None:
            raise TaskNotFound()
        first = self._first_piece(state.file)
        if first is None:
            raise TaskNotFound()
        return state, first

    def _input_download(self, state: TaskState, first: bytes, media_type: str) -> Download:
        """The input of ``state`` as a download: the first piece read, the rest streamed."""
        assert state.file is not None
        return Download(
            name=state.file_name or "input",
            media_type=media_type,
            size=state.file.size,
            pieces=self._pieces(state.file, first),
        )

    def _first_piece(self, ref: BlobRef) -> bytes | None:
        """The first piece of a file (on the reader thread that checked its task); None if the
        blob is gone."""
        return self.store.log.read_blob(ref, 0, PIECE)

    def _pieces(self, ref: BlobRef, first: bytes) -> AsyncGenerator[bytes, None]:
        """A file's pieces, the first already read. The rest are read in order through one blob
        reader on the read pool, one piece at a time as the client takes them: a client that
        stalls holds one piece, and after ``IDLE`` seconds nothing in the database either."""

        async def pieces() -> AsyncGenerator[bytes, None]:
            yield first
            if len(first) >= ref.size:
                return
            reader = self.store.log.open_blob(ref, len(first))
            loop = asyncio.get_running_loop()
            try:
                sent = len(first)
                while sent < ref.size:
                    piece = await self.reads.run(reader.read, PIECE)
                    if not piece:
                        note(outcome="InputGone", sent_bytes=sent)
                        raise InputGone(f"The file was deleted after {sent} bytes were sent")
                    sent += len(piece)
                    idle = loop.call_later(IDLE, reader.release)
                    try:
                        yield piece
                    finally:
                        idle.cancel()
            finally:
                reader.close()

        return pieces()

    def _bare(self, tx: Any, outcome: Outcome) -> TaskView:
        return TaskView(state=outcome.after)

    def _replayed(
        self,
        use_case: UseCase,
        caller: Caller,
        parts: Any,
        idempotency_key: str | None,
        result_type: type[R],
    ) -> R | None:
        """The stored outcome a retry is answered with (as ``_execute`` would answer it), or
        None: lets a use case skip work the retry would not use (a create's download)."""
        key = idempotency.check_key(idempotency_key)
        if key is None:
            return None
        stored = self.store.records.find_outcome(caller.key_id, key)
        if stored is None:
            return None
        return self._replay(stored, idempotency.fingerprint(use_case.name, parts), result_type)

    async def _run(
        self,
        use_case: UseCase,
        caller: Caller,
        command: CommandSource,
        result_type: type[R],
        build: Callable[[Any, Outcome], R],
        parts: Any,
        idempotency_key: str | None,
        request_id: str | None,
        *,
        blobs: Sequence[bytes] = (),
        kept: Callable[[R], R] | None = None,
    ) -> R:
        result, _ = await self._execute(
            use_case,
            caller,
            command,
            result_type,
            build,
            parts,
            idempotency_key,
            request_id,
            blobs=blobs,
            kept=kept,
        )
        return result

    async def _execute(
        self,
        use_case: UseCase,
        caller: Caller,
        command: CommandSource,
        result_type: type[R],
        build: Callable[[Any, Outcome], R],
        parts: Any,
        idempotency_key: str | None,
        request_id: str | None,
        *,
        blobs: Sequence[bytes] = (),
        kept: Callable[[R], R] | None = None,
    ) -> tuple[R, bool]:
        """Run a command through group commit and build its result in the transaction; with an
        Idempotency-Key, answer a retry from the stored outcome and store a new one (``kept``
        of it, when given: what a retry may be shown, a secret left out). The flag says
        whether the result was replayed."""
        key = idempotency.check_key(idempotency_key)
        fp = idempotency.fingerprint(use_case.name, parts) if key is not None else ""
        if key is not None:
            stored = self.store.records.find_outcome(caller.key_id, key)
            if stored is not None:
                return self._replay(stored, fp, result_type), True

        def after_append(tx: Any, outcome: Outcome) -> R:
            result = build(tx, outcome)
            if key is not None:
                stored = kept(result) if kept is not None else result
                record = StoredOutcome(fingerprint=fp, outcome=msgspec.json.encode(stored))
                stamp = self.clock().isoformat()
                self.store.records.record_outcome(tx, caller.key_id, key, record, stamp)
            return result

        envelope = Envelope(
            recorded_at=self.clock(),
            actor=Actor(key_id=caller.key_id, role=caller.role),
            request_id=request_id,
            idempotency_key=key,
        )
        name = type(command).__name__ if not callable(command) else "ClaimTask"
        note(command=name)
        job = Request(
            command=command, envelope=envelope, blobs=tuple(blobs), after_append=after_append
        )
        try:
            outcome = await self.writer.submit_async(job)
        except DuplicateRecord:
            assert key is not None
            stored = self.store.records.find_outcome(caller.key_id, key)
            assert stored is not None
            return self._replay(stored, fp, result_type), True
        except Exception as exc:
            note(outcome=type(exc).__name__)
            raise
        subject = outcome.after
        note(
            **(
                {"task_id": subject.task_id}
                if isinstance(subject, TaskState)
                else {"webhook_id": subject.webhook_id}
            ),
            events=len(outcome.recorded),
            outcome="appended" if outcome.recorded else "unchanged",
        )
        return outcome.extra, False

    def _replay(self, stored: StoredOutcome, fp: str, result_type: type[R]) -> R:
        if stored.legacy:
            raise IdempotencyMismatch(
                "Idempotency-Key was used before this server was upgraded: that request was"
                " done, and its answer cannot be replayed; use a new key"
            )
        if stored.fingerprint != fp:
            raise IdempotencyMismatch()
        try:
            result = msgspec.json.decode(stored.outcome, type=result_type)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise IdempotencyMismatch(
                "Idempotency-Key's stored answer cannot be read by this version of the server;"
                " the request was done; use a new key"
            ) from None
        note(outcome="replayed")
        metrics.IDEMPOTENT_REPLAYS.inc()
        return result
