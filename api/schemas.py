"""Request and response bodies (msgspec Structs) and the Task JSON Chunkr's SDK parses."""

from __future__ import annotations

import base64
import binascii
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ledger.events import SUCCEEDED
from ledger.state import TaskState

PositiveInt = Annotated[int, Meta(ge=1, le=2**31 - 1)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class BadRequest(Exception):
    """A request a person must fix; the message is the plain-text 400 body."""


class ChunkProcessing(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    ignore_headers_and_footers: bool | None = None
    target_length: PositiveInt | None = None
    tokenizer: str | dict[str, str] | None = None


class LlmProcessing(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    model_id: str | None = None
    fallback_strategy: str | dict[str, str | None] | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None


class ConfigurationFields(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
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


def decode_body(raw: bytes, type_: type[msgspec.Struct]) -> Any:
    """Decode a JSON body into ``type_``; BadRequest with a readable reason otherwise."""
    if not raw.strip():
        raise BadRequest("Request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(raw, type=type_)
    except RecursionError:
        raise BadRequest("Invalid request body: it is nested too deeply") from None
    except UnicodeDecodeError:  # msgspec's answer to invalid UTF-8 inside a JSON string
        raise BadRequest("Request body is not valid JSON: a string is not valid UTF-8") from None
    except msgspec.DecodeError as exc:
        text = str(exc)
        if text.startswith("Expected `object`"):
            raise BadRequest("Request body must be a JSON object") from None
        if "malformed" in text.lower() or "invalid" in text.lower() and "utf-8" in text.lower():
            raise BadRequest(f"Request body is not valid JSON: {text}") from None
        raise BadRequest(f"Invalid request body: {text}") from None


DEFAULT_CONFIGURATION: dict[str, Any] = {
    "chunk_processing": {
        "ignore_headers_and_footers": True,
        "target_length": 512,
        "tokenizer": {"Enum": "Word"},
    },
    "error_handling": "Fail",
    "expires_in": None,
    "high_resolution": True,
    "ocr_strategy": "All",
    "segmentation_strategy": "LayoutAnalysis",
    "llm_processing": {
        "model_id": None,
        "fallback_strategy": "Default",
        "max_completion_tokens": None,
        "temperature": 0.0,
    },
}


def normalise_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Chunkr's input spellings to its stored ones: ``expires_at`` -> ``expires_in``,
    a bare tokenizer name -> ``{"Enum": name}``, ``ocr_strategy: Off`` -> ``Auto``."""
    fields = dict(fields)
    if "expires_at" in fields:
        fields.setdefault("expires_in", fields.pop("expires_at"))
    chunking = fields.get("chunk_processing")
    if isinstance(chunking, dict) and isinstance(chunking.get("tokenizer"), str):
        fields["chunk_processing"] = {**chunking, "tokenizer": {"Enum": chunking["tokenizer"]}}
    if fields.get("ocr_strategy") == "Off":
        fields["ocr_strategy"] = "Auto"
    return fields


MAX_FILE_NAME = 255


def parse_time(name: str, value: str | None) -> datetime | None:
    """A query parameter holding an RFC 3339 time with a time zone; BadRequest otherwise."""
    if value is None:
        return None
    try:
        when = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        when = None
    if when is None or when.tzinfo is None:
        raise BadRequest(f"{name} must be an RFC 3339 time with a time zone")
    return when


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


def check_file_name(name: str | None) -> str | None:
    if name is None:
        return None
    if len(name) > MAX_FILE_NAME:
        raise BadRequest(f"file_name is longer than {MAX_FILE_NAME} characters")
    if not name.isprintable() and any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
        raise BadRequest("file_name must not contain control characters")
    if "/" in name or "\\" in name:
        raise BadRequest("file_name must be a plain file name, without directories")
    return name


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

    next: ClaimedTaskResponse | None = None


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


# -- worker bodies -------------------------------------------------------------------------------

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


class BoundingBox(msgspec.Struct, kw_only=True):
    left: float
    top: float
    width: float
    height: float


class Segment(msgspec.Struct, kw_only=True):
    """The fields of a segment the chunkr-ai SDK requires; others pass through untouched."""

    bbox: BoundingBox
    page_height: float
    page_width: float
    page_number: int
    segment_id: str
    segment_type: Literal[
        "Caption", "Footnote", "Formula", "ListItem", "Page", "PageFooter", "PageHeader",
        "Picture", "SectionHeader", "Table", "Text", "Title",
    ]
    confidence: float | None


class Chunk(msgspec.Struct, kw_only=True):
    chunk_id: str
    chunk_length: int
    segments: list[Segment]


class Output(msgspec.Struct, kw_only=True):
    chunks: list[Chunk]
    file_name: str | None = None
    page_count: NonNegativeInt | None = None
    pdf_url: str | None = None


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


class LeaseResponse(msgspec.Struct, kw_only=True):
    task_id: str
    worker_id: str
    lease_until: datetime
    attempt: int


def check_output(output: dict[str, Any], file_name: str | None) -> dict[str, Any]:
    """Validate a worker's output against what the SDK parses; fill Chunkr's optional keys."""
    try:
        msgspec.convert(output, Output)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid output: {exc}") from None
    return {
        "file_name": file_name,
        "page_count": None,
        "pdf_url": None,
        "extracted_json": None,
        **output,
    }
