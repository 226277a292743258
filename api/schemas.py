"""The HTTP bodies: requests and responses as msgspec Structs (Litestar decodes and documents
them from the handlers' signatures), and the Task JSON Chunkr's SDK parses."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from api.core import Finished, TaskView
from api.refusals import BadRequest
from ledger.events import SUCCEEDED
from ledger.log import RecordedEvent
from ledger.state import TaskState

PositiveInt = Annotated[int, Meta(ge=1, le=2**31 - 1)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class ChunkProcessing(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    ignore_headers_and_footers: bool | None = None
    target_length: PositiveInt | None = None
    tokenizer: str | dict[str, str] | None = None


class LlmProcessing(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    model_id: str | None = None
    fallback_strategy: str | dict[str, str | None] | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None


class ConfigurationFields(
    msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """The Chunkr configuration fields a create or update may set (the SDK's Configuration)."""

    chunk_processing: ChunkProcessing | None = None
    expires_in: NonNegativeInt | None = None
    error_handling: Literal["Fail", "Continue"] | None = None
    high_resolution: bool | None = None
    ocr_strategy: Literal["All", "Auto", "Off"] | None = None
    segment_processing: dict[str, dict[str, Any] | None] | None = None
    segmentation_strategy: Literal["LayoutAnalysis", "Page"] | None = None
    pipeline: Literal["Azure", "Chunkr"] | None = None
    llm_processing: LlmProcessing | None = None
    # Deprecated Chunkr fields, accepted and kept so old clients are not refused.
    json_schema: dict[str, Any] | None = None
    model: str | None = None
    target_chunk_length: PositiveInt | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that were given, as plain JSON values, nulls dropped."""
        return _drop_nulls(msgspec.to_builtins(self))


class CreateBody(ConfigurationFields, kw_only=True, forbid_unknown_fields=True):
    file: str
    file_name: str | None = None
    #: Chunkr accepts ``expires_at`` as an alias of ``expires_in`` on input.
    expires_at: NonNegativeInt | None = None


class UpdateBody(ConfigurationFields, kw_only=True, forbid_unknown_fields=True):
    expires_at: NonNegativeInt | None = None


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def decode_file(file: str) -> bytes:
    """The bytes of a create body's ``file``: base64, or a ``data:`` URL holding base64."""
    text = file.strip()
    if text.startswith(("http://", "https://")):
        raise BadRequest("File URLs are not supported by this server; send the file as base64")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise BadRequest("Invalid data URL: expected data:<type>;base64,<data>")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Invalid base64 data") from None
    if not data:
        raise BadRequest("File is empty")
    return data


WorkerId = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


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
    configuration: dict[str, Any]
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
    base_url: str,
    output: dict[str, Any] | None,
    include_chunks: bool,
) -> TaskResponse:
    """Task JSON as Chunkr emits it. ``output`` is the decoded output blob, if there is one."""
    task_url = f"{base_url}/api/v1/task/{state.task_id}"
    configuration = {**state.configuration, "input_file_url": f"{task_url}/input"}
    rendered_output = None
    if output is not None:
        rendered_output = OutputResponse(
            chunks=output.get("chunks", []) if include_chunks and state.status == SUCCEEDED else [],
            file_name=output.get("file_name", state.file_name),
            page_count=output.get("page_count"),
            pdf_url=output.get("pdf_url"),
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


def render_view(view: TaskView, base_url: str, include_chunks: bool = True) -> TaskResponse:
    return render_task(
        view.state, base_url=base_url, output=view.output, include_chunks=include_chunks
    )


def render_claimed(view: TaskView, base_url: str) -> ClaimedTaskResponse:
    state = view.state
    task = render_task(state, base_url=base_url, output=None, include_chunks=False)
    return ClaimedTaskResponse(
        **msgspec.structs.asdict(task),
        lease_until=state.lease_until,
        attempt=state.attempt,
        worker_id=state.worker_id,
    )


def render_finished(finished: Finished, base_url: str) -> FinishedTaskResponse:
    task = render_view(finished.task, base_url)
    nxt = finished.next
    return FinishedTaskResponse(
        **msgspec.structs.asdict(task),
        next=msgspec.UNSET
        if nxt is msgspec.UNSET
        else (None if nxt is None else render_claimed(nxt, base_url)),
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
    task_id: str
    version: int
    type: str
    recorded_at: datetime
    actor: ActorJSON
    request_id: str | None
    idempotency_key: str | None
    hash: str
    data: dict[str, Any]


class FeedPage(msgspec.Struct, kw_only=True):
    events: list[EventJSON]
    #: Pass as ``after`` to get the next page (the last position seen, or ``after`` if none).
    next_after: int


def event_json(recorded: RecordedEvent) -> EventJSON:
    data = msgspec.to_builtins(recorded.event)
    kind = data.pop("type")
    return EventJSON(
        position=recorded.position,
        task_id=recorded.event.task_id,
        version=recorded.version,
        type=kind,
        recorded_at=recorded.recorded_at,
        actor=ActorJSON(key_id=recorded.actor.key_id, role=recorded.actor.role),
        request_id=recorded.request_id,
        idempotency_key=recorded.idempotency_key,
        hash=recorded.hash,
        data=data,
    )
