"""The application service: one method per use case, no transport in it.

Each method takes the caller (an authenticated key), and for commands the Idempotency-Key and
the request id, as plain arguments, and returns domain values (``TaskView``, ``Finished``,
recorded events), never bytes. It asks ``api.policy`` whether the caller may, stamps the
command's time (the decider never reads a clock), runs commands through group commit with their
envelope, and keeps each outcome for an idempotent retry in the same transaction. The HTTP
adapter, the command line and the tests call the same methods. It imports nothing from Litestar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from api.configuration import ConfigurationInput, fields_from_input, parse_fields
from api.contract import check_file_name
from api.core import Finished, TaskView, note, now
from api.fetch import Fetched, FileUrl
from api.filetypes import PDF, accepted, sniff
from api.ids import new_task_id
from api.links import LinkCases
from api.live import PAGE, Follow
from api.output import decoded
from api.policy import Caller, Grant, Scope, UseCase, authorize
from api.refusals import BadRequest, Busy, size_text
from api.webhooks import WebhookCases, check_webhook_url
from api.work import WorkerCases
from ledger.commands import CancelTask, CreateTask, DeleteTask, UpdateTask
from ledger.errors import TaskNotFound
from ledger.events import EVENT_TAGS, SUCCEEDED, blob_ref
from ledger.log import FeedQuery, RecordedEvent, TaskQuery
from ledger.state import TaskState
from ledger.webhooks import WEBHOOK_EVENT_TAGS

P = TypeVar("P")

MAX_LIST_LIMIT = 1000
#: Past this the offset (page - 1) * limit no longer fits a 64-bit integer.
MAX_PAGE = 2**31 - 1
MAX_FEED_LIMIT = 1000
#: The most events a page of one task's history holds (and the default page).
MAX_HISTORY_LIMIT = 1000
#: The unknown field names a request's log line lists (all are counted).
MAX_IGNORED_LOGGED = 20


def utc_time(name: str, when: datetime | None) -> datetime | None:
    """A query's time in UTC; BadRequest if it has no time zone or falls outside the years
    1-9999 once in UTC (``0001-01-01T00:00:00+05:00`` does)."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise BadRequest(f"{name} must be an RFC 3339 time with a time zone")
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"{name} is outside the range of times this server keeps") from None


def _decoded(view: TaskView) -> TaskView:
    """The view with its output decoded (the reads leave its values as stored JSON)."""
    if view.output is None:
        return view
    return TaskView(state=view.state, output=decoded(view.output))


def _with_url(parts: tuple[Any, ...], webhook_url: str | None) -> tuple[Any, ...]:
    """What an Idempotency-Key covers, with the task's ``webhook_url`` if one was sent (so a
    request without one has the fingerprint it had before webhooks)."""
    return parts if webhook_url is None else (*parts, webhook_url)


class ListTooLarge(BadRequest):
    """A list with chunks whose outputs add up to more than ``Settings.max_list_output_bytes``."""


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a task's events in version order, and the version to page on from (the last
    one given) when there are more; None on the last page."""

    events: list[RecordedEvent]
    next_after: int | None = None


class TaskLedger(LinkCases, WorkerCases, WebhookCases):
    """The use cases (the workers' in ``api.work``, the file links' in ``api.links``, the
    webhooks' in ``api.webhooks``)."""

    #: URL downloads in flight in this process (see ``_download``).
    _downloads = 0

    # -- tasks -------------------------------------------------------------------------------

    async def create(
        self,
        caller: Caller,
        *,
        file: bytes | FileUrl,
        file_name: str | None = None,
        configuration: ConfigurationInput | dict[str, Any] | None = None,
        ignored_fields: Sequence[str] = (),
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView:
        """A new task for ``file``, given as bytes or as a URL the server downloads (the
        task's name is then ``file_name`` if given, else the one the download gives).
        ``webhook_url`` receives the task's own webhooks (signed with the owner's default
        secret).
        ``configuration`` is what the caller sent (typed, or plain JSON that is checked here);
        the task stores each field sent, whole, with its own defaults (api.configuration).
        ``ignored_fields`` are the unknown fields the caller's body held (counted in the
        request's log line)."""
        authorize(UseCase.CREATE, caller)
        file_name = check_file_name(file_name)
        fields = {
            "expires_in": self.settings.default_expires_in,
            **self._configuration(configuration, ignored_fields),
        }
        if webhook_url is not None:
            webhook_url = await self._task_webhook_url(webhook_url)
        # An Idempotency-Key covers what the caller sent: for a URL, the URL (a retry is the
        # same request whatever the URL serves by then, and is answered without downloading).
        source: list[str] | None = None
        name = file_name
        if isinstance(file, FileUrl):
            source = ["url", file.url]
            replayed = self._replayed(
                UseCase.CREATE,
                caller,
                _with_url((source, file_name, fields), webhook_url),
                idempotency_key,
                TaskView,
            )
            if replayed is not None:
                return replayed
            fetched = await self._download(file.url)
            file, name = fetched.data, file_name or fetched.file_name
        if not file:
            raise BadRequest("File is empty")
        media_type = sniff(file, name)
        if not accepted(media_type, self.settings.file_types):
            raise BadRequest(
                "Unsupported file type: this server takes PDF, Word, Excel, PowerPoint, JPEG "
                "and PNG files"
            )
        ref = blob_ref(file)
        command = CreateTask(
            task_id=new_task_id(),
            at=self.clock(),
            owner=caller.owner,
            configuration=fields,
            file=ref,
            file_name=name,
            expires_in=fields["expires_in"],
            media_type=media_type,
            webhook_url=webhook_url,
        )
        fp = _with_url((source or ref.sha256, file_name, fields), webhook_url)
        return await self._run(
            UseCase.CREATE,
            caller,
            command,
            TaskView,
            self._view,
            fp,
            idempotency_key,
            request_id,
            blobs=(file,),
        )

    async def _download(self, url: str) -> Fetched:
        """The file at ``url``. A download holds up to the body limit (twice, at its peak) as a
        large create does, so it takes one of the same ``max_large_creates`` places: past them
        it is refused with 503 and Retry-After before anything is fetched."""
        if self.fetcher is None:
            raise BadRequest("File URLs are not supported by this server; send the file as base64")
        limit = self.settings.max_large_creates
        if 0 < limit <= self._downloads:
            raise Busy(f"Too many file downloads at once ({limit}); retry shortly")
        self._downloads += 1
        try:
            return await self.fetcher.fetch(url)
        finally:
            self._downloads -= 1

    async def get(
        self,
        caller: Caller,
        task_id: str,
        *,
        as_of_version: int | None = None,
        as_of: datetime | None = None,
        include_chunks: bool = True,
    ) -> TaskView:
        """The task now, or as it was after its N-th event, or as it was at a time; its output
        decoded when ``include_chunks`` and it Succeeded."""
        return await self.get_as(
            caller,
            task_id,
            _decoded,
            as_of_version=as_of_version,
            as_of=as_of,
            include_chunks=include_chunks,
        )

    async def get_as(
        self,
        caller: Caller,
        task_id: str,
        present: Callable[[TaskView], P],
        *,
        as_of_version: int | None = None,
        as_of: datetime | None = None,
        include_chunks: bool = True,
    ) -> P:
        """``get``, its answer shaped by ``present`` on the reader thread that read it (the
        HTTP adapter renders its JSON there, off the event loop: see BENCHMARKS.md). The
        output is read only with ``include_chunks`` (as Chunkr, the default), its values left
        as stored JSON (``TaskView``)."""
        if as_of_version is None and as_of is None:
            grant = authorize(UseCase.GET, caller)
            return await self.reads.run(
                self._read_now, grant, task_id, self.clock(), present, include_chunks
            )
        grant = authorize(UseCase.GET_AS_OF, caller)
        if as_of_version is not None and as_of is not None:
            raise BadRequest("Give as_of_version or as_of, not both")
        as_of = utc_time("as_of", as_of)
        if as_of_version is not None and as_of_version < 1:
            raise BadRequest("Invalid request: as_of_version: must be a whole number, 1 or more")
        return await self.reads.run(
            self._read_as_of,
            grant,
            task_id,
            as_of_version,
            as_of,
            self.clock(),
            present,
            include_chunks,
        )

    def _read_now(
        self,
        grant: Grant,
        task_id: str,
        at: datetime,
        present: Callable[[TaskView], P],
        chunks: bool,
    ) -> P:
        state = self.store.state(task_id)
        if state is None or not grant.sees(state, at):
            raise TaskNotFound()
        return present(self._read_view(state, chunks))

    def _read_as_of(
        self,
        grant: Grant,
        task_id: str,
        version: int | None,
        when: datetime | None,
        at: datetime,
        present: Callable[[TaskView], P],
        chunks: bool,
    ) -> P:
        # Never the whole history: the version a time names is a binary search, and the state
        # at a version is folded from the task's latest checkpoint before it (design.md).
        current = self._version_seen(grant, task_id, at)
        if when is not None:
            version = self.store.version_at(task_id, when)
            if version == 0:
                raise TaskNotFound("Task not found: it did not exist yet at that time")
        elif version is not None and version > current:
            raise BadRequest(f"as_of_version must be between 1 and {current} for this task")
        assert version is not None
        state = self.store.state_at(task_id, version)
        if state is None:
            raise TaskNotFound()
        return present(self._read_view(state, chunks))

    async def list_tasks(
        self,
        caller: Caller,
        *,
        page: int | None = None,
        limit: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        include_chunks: bool = False,
    ) -> list[TaskView]:
        """A page of the caller's tasks, newest first (every owner's for an admin); their
        outputs decoded with ``include_chunks``."""
        return await self.list_as(
            caller,
            _decoded,
            page=page,
            limit=limit,
            start=start,
            end=end,
            include_chunks=include_chunks,
        )

    async def list_as(
        self,
        caller: Caller,
        present: Callable[[TaskView], P],
        *,
        page: int | None = None,
        limit: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        include_chunks: bool = False,
        inline_inputs: bool = False,
    ) -> list[P]:
        """``list_tasks``, each task shaped by ``present`` on the reader thread that read it
        (as ``get_as``: ``data:`` links read the inputs there). The outputs are read only with
        ``include_chunks`` (the default is without, as Chunkr's), and then only if their sizes
        add up to at most ``Settings.max_list_output_bytes`` (the first task's always fits):
        otherwise ``ListTooLarge``, before any is read. ``inline_inputs`` (``present`` puts
        each input in the answer, as a ``data:`` URL) counts the inputs against the same cap."""
        grant = authorize(UseCase.LIST, caller)
        if page is not None and limit is None:
            raise BadRequest("Limit is required when page is provided")
        if page is not None and page < 1:
            raise BadRequest("page must be 1 or more")
        if page is not None and page > MAX_PAGE:
            raise BadRequest(f"page must be at most {MAX_PAGE}")
        if limit is not None and not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        start, end = utc_time("start", start), utc_time("end", end)
        offset = (page - 1) * limit if page is not None and limit is not None else 0
        query = TaskQuery(
            at=self.clock(), owner=grant.owner, limit=limit, offset=offset, start=start, end=end
        )
        return await self.reads.run(self._list, query, present, include_chunks, inline_inputs)

    def _list(
        self, query: TaskQuery, present: Callable[[TaskView], P], chunks: bool, inputs: bool
    ) -> list[P]:
        states = self.store.views.list_tasks(query)
        if chunks or inputs:
            self._check_list_size(states, chunks, inputs)
        return [present(self._read_view(s, chunks)) for s in states]

    def _check_list_size(self, states: Sequence[TaskState], chunks: bool, inputs: bool) -> None:
        """Refuse a list with chunks whose outputs (as stored) add up to more than the cap,
        counting only the answers that show chunks (Succeeded tasks), and with ``inputs`` the
        inputs sent as ``data:`` URLs (base64: 4/3 of their size, twice for a PDF, which is its
        ``pdf_url`` too). A list that answered fewer tasks than asked would make a client that
        pages by ``page`` skip tasks unseen, so the client is told the ``limit`` that fits
        instead."""
        cap = self.settings.max_list_output_bytes
        total = 0
        counted = 0
        for n, state in enumerate(states):
            size = 0
            if chunks and state.status == SUCCEEDED and state.output is not None:
                size += state.output.size
            if inputs and state.file is not None:
                size += (state.file.size * 4 // 3) * (2 if state.media_type == PDF else 1)
            if not size:
                continue
            total += size
            counted += 1
            if total > cap and counted > 1:
                what = " and ".join(
                    word for word, on in (("include_chunks", chunks), ("base64_urls", inputs)) if on
                )
                raise ListTooLarge(
                    f"The outputs and files of these tasks add up to more than this server sends "
                    f"in one list with {what} ({size_text(cap)}): ask for fewer tasks (limit={n} "
                    f"fits from here), or list without {what} and get each task"
                )

    async def update(
        self,
        caller: Caller,
        task_id: str,
        configuration: ConfigurationInput | dict[str, Any],
        *,
        ignored_fields: Sequence[str] = (),
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView:
        """Run a finished task again with the fields sent replacing the task's, each whole (with
        its own defaults); the fields not sent keep their values. A ``webhook_url`` replaces
        the task's own one."""
        grant = authorize(UseCase.UPDATE, caller)
        fields = self._configuration(configuration, ignored_fields)
        if webhook_url is not None:
            webhook_url = await self._task_webhook_url(webhook_url)
        command = UpdateTask(
            task_id=task_id,
            at=self.clock(),
            owner=grant.owner,
            configuration=fields,
            max_events=self.settings.max_events_per_task,
            webhook_url=webhook_url,
        )
        parts = _with_url((task_id, fields), webhook_url)
        return await self._run(
            UseCase.UPDATE,
            caller,
            command,
            TaskView,
            self._view,
            parts,
            idempotency_key,
            request_id,
        )

    async def _task_webhook_url(self, url: str) -> str:
        return await check_webhook_url(url, allow_private=self.settings.allow_private_webhooks)

    @staticmethod
    def _configuration(
        sent: ConfigurationInput | dict[str, Any] | None, ignored: Sequence[str]
    ) -> dict[str, Any]:
        if ignored:
            note(ignored_fields=len(ignored), ignored=list(ignored[:MAX_IGNORED_LOGGED]))
        if sent is None:
            return {}
        if isinstance(sent, dict):
            return parse_fields(sent)
        return fields_from_input(sent)

    async def cancel(
        self,
        caller: Caller,
        task_id: str,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView:
        """Cancel a task that has not started (or a pending update: the task goes back to
        exactly how it was before it)."""
        return await self._close(
            UseCase.CANCEL, CancelTask, caller, task_id, idempotency_key, request_id
        )

    async def delete(
        self,
        caller: Caller,
        task_id: str,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView:
        """Delete a finished task (its blobs are purged; its events stay for audit)."""
        return await self._close(
            UseCase.DELETE, DeleteTask, caller, task_id, idempotency_key, request_id
        )

    async def _close(
        self,
        use_case: UseCase,
        make: type[CancelTask] | type[DeleteTask],
        caller: Caller,
        task_id: str,
        idempotency_key: str | None,
        request_id: str | None,
    ) -> TaskView:
        """Cancel or delete: a command that names only the task and the caller's scope."""
        grant = authorize(use_case, caller)
        command = make(task_id=task_id, at=self.clock(), owner=grant.owner)
        return await self._run(
            use_case, caller, command, TaskView, self._bare, (task_id,), idempotency_key, request_id
        )

    # -- audit -------------------------------------------------------------------------------

    async def history(
        self, caller: Caller, task_id: str, *, after: int = 0, limit: int = MAX_HISTORY_LIMIT
    ) -> HistoryPage:
        """A page of the task's events, oldest first: those after version ``after``, at most
        ``limit`` (an admin's include deleted and expired tasks)."""
        grant = authorize(UseCase.HISTORY, caller)
        if after < 0:
            raise BadRequest("after must be a version, 0 or more")
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
        return await self.reads.run(self._history, grant, task_id, self.clock(), after, limit)

    def _history(
        self, grant: Grant, task_id: str, at: datetime, after: int, limit: int
    ) -> HistoryPage:
        self._version_seen(grant, task_id, at)
        events = self.store.history(task_id, after=after, limit=limit + 1)
        if len(events) > limit:
            return HistoryPage(events=events[:limit], next_after=events[limit - 1].version)
        return HistoryPage(events=events)

    def _version_seen(self, grant: Grant, task_id: str, at: datetime) -> int:
        """The task's stream version, if the grant reaches the task. Auditing (every task that
        ever existed) goes by the log itself, so a task whose projection row is missing or
        damaged can still be audited."""
        if grant.scope is not Scope.EVER and not grant.sees(self.store.state(task_id), at):
            raise TaskNotFound()
        version = self.store.version(task_id)
        if version == 0:
            raise TaskNotFound()
        return version

    async def feed(
        self,
        caller: Caller,
        *,
        after: int = 0,
        limit: int = 100,
        types: Sequence[str] = (),
        task_id: str | None = None,
    ) -> list[RecordedEvent]:
        """Events in position order after ``after``: a user's are those of their own tasks
        that are still visible (a deleted or expired task's have left it, all but its
        tombstone: ``projections.feed``); an admin's are the whole log."""
        grant = authorize(UseCase.FEED, caller)
        self._check_types(types)
        if not 1 <= limit <= MAX_FEED_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_FEED_LIMIT}")
        return await self.reads.run(self._feed_page, grant, after, limit, tuple(types), task_id)

    async def follow(
        self,
        caller: Caller,
        *,
        after: int = 0,
        types: Sequence[str] = (),
        task_id: str | None = None,
    ) -> Follow:
        """The feed, live: ``feed`` from ``after`` on, then each event as it is appended, until
        the caller's key is revoked (``api.live.Follow``). It holds one of the key's stream
        slots until it is closed: TooManyStreams (429) if the key already holds
        ``settings.max_streams_per_key`` in this process."""
        grant = authorize(UseCase.FEED, caller)
        self._check_types(types)
        held = self.watch.hold(caller.key_id, stream=True)
        wanted = tuple(types)

        def read_page(cursor: int) -> tuple[int, list[RecordedEvent]]:
            head = self.store.log.last_position()  # before the page: see Follow.pages
            return head, self._feed_page(grant, cursor, PAGE, wanted, task_id)

        return Follow(self.reads, self.watch, held, read_page, after, grant.owner)

    @staticmethod
    def _check_types(types: Sequence[str]) -> None:
        known = (*EVENT_TAGS, *WEBHOOK_EVENT_TAGS)
        unknown = sorted(set(types) - set(known))
        if unknown:
            raise BadRequest(f"Unknown event type {unknown[0]!r}; known: {', '.join(known)}")

    def _feed_page(
        self, grant: Grant, after: int, limit: int, types: tuple[str, ...], task_id: str | None
    ) -> list[RecordedEvent]:
        query = FeedQuery(
            after=after,
            limit=limit,
            owner=grant.owner,
            types=types,
            task_id=task_id,
            visible_at=self.clock(),
        )
        return self.store.views.feed(query)


__all__ = ["Finished", "HistoryPage", "ListTooLarge", "TaskLedger", "TaskView", "now"]
