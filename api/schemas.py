"""The HTTP bodies: requests and responses as msgspec Structs (Litestar decodes and documents
them from the handlers' signatures), and the Task JSON Chunkr's SDK parses."""

from __future__ import annotations

import binascii
import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from api.configuration import (
    NESTED_FIELDS,
    Configuration,
    ConfigurationInput,
    configuration_of,
    unknown_fields,
)
from api.contract import MAX_WORKER_ID
from api.core import Finished, TaskView
from api.fetch import FileUrl
from api.links import Linker
from api.output import summary_of_fields
from api.refusals import BadRequest
from ledger.events import SUCCEEDED
from ledger.log import RecordedEvent
from ledger.state import TaskState
from ledger.webhooks import WebhookEvent

PositiveInt = Annotated[int, Meta(ge=1, le=2**31 - 1)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class CreateBody(ConfigurationInput, kw_only=True):
    """A create: the file (base64, a ``data:`` URL) and the configuration fields to set.
    Unknown fields are ignored (as Chunkr ignores them)."""

    file: str
    file_name: str | None = None
    #: Chunkr accepts ``expires_at`` as an alias of ``expires_in`` on input.
    expires_at: NonNegativeInt | None = None
    #: taskledger's own: where this task's webhooks go (signed with the owner's default secret).
    webhook_url: str | None = None


class UpdateBody(ConfigurationInput, kw_only=True):
    """An update: the configuration fields to replace, each whole."""

    expires_at: NonNegativeInt | None = None
    #: taskledger's own: a new address for this task's webhooks.
    webhook_url: str | None = None


def configuration_sent(body: CreateBody | UpdateBody) -> ConfigurationInput:
    """The configuration a body sent, ``expires_at`` read as ``expires_in``."""
    if body.expires_at is not None and body.expires_in is None:
        return msgspec.structs.replace(body, expires_in=body.expires_at)
    return body


_BODY_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def ignored_fields(raw: bytes, shape: type[ConfigurationInput]) -> list[str]:
    """The fields of a JSON body (already decoded once into ``shape``) that ``shape`` does not
    know: the paths of what decoding ignored, for the request's log line. The top level is
    scanned without decoding its values (the file's base64 text stays unread)."""
    try:
        top = _BODY_KEYS.decode(raw)
    except msgspec.DecodeError:
        return []
    known = shape.__struct_fields__
    body = {
        key: msgspec.json.decode(value) if key in NESTED_FIELDS else None
        for key, value in top.items()
        if key not in known or key in NESTED_FIELDS
    }
    return unknown_fields(body, shape)


#: What ``base64.b64decode(..., validate=True)`` accepts.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def decode_file(file: str) -> bytes | FileUrl:
    """A create body's ``file``: the bytes of base64 or of a ``data:`` URL holding base64, or
    an http(s) URL for the service to download."""
    text = file.strip()
    if text[:8].lower().startswith(("http://", "https://")):
        return FileUrl(text)
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise BadRequest("Invalid data URL: expected data:<type>;base64,<data>")
    # As base64.b64decode(text, validate=True), but straight from the text: b64decode first
    # copies a str into ASCII bytes (for a large file, one more copy of it in memory).
    if not _BASE64.fullmatch(text):
        raise BadRequest("Invalid base64 data")
    try:
        data = binascii.a2b_base64(text)
    except (binascii.Error, ValueError):
        raise BadRequest("Invalid base64 data") from None
    if not data:
        raise BadRequest("File is empty")
    return data


#: Also checked by the service (api.contract.check_worker_id): no format, bidirectional or
#: unassigned character either.
WorkerId = Annotated[
    str, Meta(min_length=1, max_length=MAX_WORKER_ID, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class ClaimBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    worker_id: WorkerId
    lease_seconds: PositiveInt | None = None
    wait_seconds: Annotated[int, Meta(ge=0, le=3600)] = 0


class HeartbeatBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    worker_id: WorkerId
    lease_seconds: PositiveInt | None = None


class ReleaseBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    worker_id: WorkerId


class CompleteBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    worker_id: WorkerId
    #: Chunkr-shaped output: ``chunks[].segments[]`` with every field the SDK needs.
    output: dict[str, Any]
    #: Also claim the oldest claimable task for this worker, answered as ``next`` (one round
    #: trip instead of two; no waiting: null when the queue is empty).
    claim_next: bool = False
    #: The lease of the task claimed next (the server's default when absent).
    lease_seconds: PositiveInt | None = None


class FailBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    worker_id: WorkerId
    error: Annotated[str, Meta(min_length=1, max_length=10_000)]
    claim_next: bool = False
    lease_seconds: PositiveInt | None = None


# -- responses ---------------------------------------------------------------------------------


class OutputResponse(msgspec.Struct, kw_only=True):
    chunks: list[dict[str, Any]]
    file_name: str | None
    page_count: int | None
    pdf_url: str | None
    extracted_json: Any = None


class TaskResponse(msgspec.Struct, kw_only=True):
    task_id: str
    status: str
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    configuration: Configuration
    output: OutputResponse | None
    task_url: str


class ClaimedTaskResponse(TaskResponse, kw_only=True):
    lease_until: datetime | None
    attempt: int
    worker_id: str | None


class FinishedTaskResponse(TaskResponse, kw_only=True):
    """What complete and fail answer: the task afterwards and, only when the body asked for
    ``claim_next``, the task claimed next for the same worker (null when none was waiting).
    ``next`` is absent when it was not asked for, and in an answer replayed for an
    Idempotency-Key (the key covers the finish, not the claim)."""

    next: ClaimedTaskResponse | None | msgspec.UnsetType = msgspec.UNSET


def render_task(
    state: TaskState,
    *,
    links: Linker,
    output: dict[str, Any] | None,
    include_chunks: bool,
) -> TaskResponse:
    """Task JSON as Chunkr emits it. ``output`` is the stored output, when it was read (its
    values decoded, or as stored JSON: either encodes the same); only its chunks are taken from
    it, and only with ``include_chunks`` for a Succeeded task. The rest of the output comes
    from the state's ``output_summary``, so an answer without chunks needs no output. ``links``
    gives the base URL and the file links (signed, or ``data:``: api.links)."""
    task_url = f"{links.base_url}/api/v1/task/{state.task_id}"
    files = links.files(state)
    configuration = msgspec.structs.replace(
        configuration_of(state.configuration), input_file_url=files.input_file_url
    )
    rendered_output = None
    summary = state.output_summary
    if summary is None and output is not None:
        # An answer kept for an Idempotency-Key before summaries were: its output is whole.
        summary = summary_of_fields(output, state.file_name)
    if state.output is not None and summary is not None:
        chunks = []
        if include_chunks and output is not None and state.status == SUCCEEDED:
            chunks = output.get("chunks", [])
        rendered_output = OutputResponse(
            chunks=chunks,
            file_name=summary.file_name,
            page_count=summary.page_count,
            pdf_url=files.pdf_url or summary.pdf_url,
        )
    elif state.file_name is not None:
        rendered_output = OutputResponse(
            chunks=[], file_name=state.file_name, page_count=None, pdf_url=None
        )
    assert state.status is not None and state.created_at is not None
    return TaskResponse(
        task_id=state.task_id,
        status=state.status,
        message=state.message,
        created_at=state.created_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        expires_at=state.expires_at,
        configuration=configuration,
        output=rendered_output,
        task_url=task_url,
    )


class LeaseResponse(msgspec.Struct, kw_only=True):
    task_id: str
    worker_id: str
    lease_until: datetime
    attempt: int


#: JSON bytes of a response Struct, for a raw reply (built once: msgspec's advice).
encode = msgspec.json.Encoder().encode


def render_view(view: TaskView, links: Linker, include_chunks: bool = True) -> TaskResponse:
    return render_task(view.state, links=links, output=view.output, include_chunks=include_chunks)


def render_claimed(view: TaskView, links: Linker) -> ClaimedTaskResponse:
    state = view.state
    task = render_task(state, links=links, output=None, include_chunks=False)
    return ClaimedTaskResponse(
        **msgspec.structs.asdict(task),
        lease_until=state.lease_until,
        attempt=state.attempt,
        worker_id=state.worker_id,
    )


def render_finished(finished: Finished, links: Linker) -> FinishedTaskResponse:
    task = render_view(finished.task, links)
    nxt = finished.next
    return FinishedTaskResponse(
        **msgspec.structs.asdict(task),
        next=msgspec.UNSET
        if nxt is msgspec.UNSET
        else (None if nxt is None else render_claimed(nxt, links)),
    )


def render_lease(state: TaskState) -> LeaseResponse:
    assert state.worker_id is not None and state.lease_until is not None
    return LeaseResponse(
        task_id=state.task_id,
        worker_id=state.worker_id,
        lease_until=state.lease_until,
        attempt=state.attempt,
    )


class ActorJSON(msgspec.Struct, kw_only=True):
    key_id: str | None
    role: str


class EventJSON(msgspec.Struct, kw_only=True):
    position: int
    #: The task's id; for a webhook subscription's event (only in an admin's view of the whole
    #: log) None, and ``webhook_id`` names the subscription.
    task_id: str | None
    version: int
    type: str
    recorded_at: datetime
    actor: ActorJSON
    request_id: str | None
    idempotency_key: str | None
    hash: str
    data: dict[str, Any]
    webhook_id: str | msgspec.UnsetType = msgspec.UNSET


class FeedPage(msgspec.Struct, kw_only=True):
    events: list[EventJSON]
    #: Pass as ``after`` to get the next page (the last position seen, or ``after`` if none).
    next_after: int


def event_json(recorded: RecordedEvent) -> EventJSON:
    event = recorded.event
    data = msgspec.to_builtins(event)
    kind = data.pop("type")
    webhook = isinstance(event, WebhookEvent)
    return EventJSON(
        position=recorded.position,
        task_id=None if webhook else data["task_id"],
        webhook_id=data["webhook_id"] if webhook else msgspec.UNSET,
        version=recorded.version,
        type=kind,
        recorded_at=recorded.recorded_at,
        actor=ActorJSON(key_id=recorded.actor.key_id, role=recorded.actor.role),
        request_id=recorded.request_id,
        idempotency_key=recorded.idempotency_key,
        hash=recorded.hash,
        data=data,
    )
