"""Chunkr's output contract: what a worker's ``complete`` may store, checked where it enters.

The types follow Chunkr's own (its server's ``OutputResponse``, ``Chunk``, ``Segment``,
``OCRResult``, ``BoundingBox``), and are never looser than the chunkr-ai SDK's pydantic models
(``chunkr_ai.api.configuration``), so every output that passes parses in the SDK, as stored and
after a trip through JSON:

- strings are never null: a segment's ``content``, ``html``, ``markdown`` and ``text`` are ""
  when absent, and an explicit null is refused (Chunkr always sends strings);
- ``bbox``, ``page_height``, ``page_width``, ``page_number``, ``segment_id`` and
  ``segment_type`` (one of Chunkr's twelve) are required in a segment, ``bbox`` and ``text`` in
  an OCR result, ``chunk_id``, ``chunk_length`` and ``segments`` in a chunk, ``chunks`` at the top;
- Chunkr's unsigned 32-bit counts (``chunk_length``, ``page_number``, ``page_count``,
  ``segment_length``) are JSON integers from 0 to 4294967295: no floats, no booleans, no strings;
- every other number is a finite float (an integer is taken as one, a boolean is not): NaN and
  infinities would be written to JSON as null, which the SDK refuses;
- fields neither Chunkr nor the SDK knows are dropped; the fields only the SDK knows (a segment's
  ``segment_length``, ``embed``, ``description`` and spreadsheet ``ss_*`` fields, a chunk's
  ``content``, the output's ``mime_type`` and ``pages``) are kept when given, with the SDK's
  types, and left out when not.

``check_output`` answers the normalised output, as plain builtins: what is stored and rendered.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from api.contract import U32, SegmentType
from api.refusals import BadRequest
from ledger.events import OutputSummary

#: A float JSON can carry: NaN fails both bounds, and infinities one of them.
Finite = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]


class BoundingBox(msgspec.Struct, kw_only=True):
    left: Finite
    top: Finite
    width: Finite
    height: Finite


class OCRResult(msgspec.Struct, kw_only=True):
    bbox: BoundingBox
    text: str
    confidence: Finite | None = None


class CellStyle(msgspec.Struct, kw_only=True):
    bg_color: str | None = None
    text_color: str | None = None
    font_face: str | None = None
    is_bold: bool | None = None
    align: Literal["Left", "Center", "Right", "Justify"] | None = None
    valign: Literal["Top", "Middle", "Bottom", "Baseline"] | None = None


class Cell(msgspec.Struct, kw_only=True):
    cell_id: str
    text: str
    range: str
    formula: str | None = None
    value: str | None = None
    hyperlink: str | None = None
    style: CellStyle | None = None


class Page(msgspec.Struct, kw_only=True):
    image: str
    page_number: U32
    page_height: Finite
    page_width: Finite
    ss_sheet_name: str | None = None
    dpi: Finite | None = None


class Segment(msgspec.Struct, kw_only=True):
    # Chunkr's fields: always present once checked.
    bbox: BoundingBox
    content: str = ""
    page_height: Finite
    llm: str | None = None
    html: str = ""
    image: str | None = None
    markdown: str = ""
    ocr: list[OCRResult] | None = []
    page_number: U32
    page_width: Finite
    segment_id: str
    segment_type: SegmentType
    confidence: Finite | None = None
    text: str = ""
    # Fields only the SDK knows: kept when given, absent otherwise.
    segment_length: U32 | None | UnsetType = UNSET
    embed: str | None | UnsetType = UNSET
    description: str | None | UnsetType = UNSET
    ss_cells: list[Cell] | None | UnsetType = UNSET
    ss_header_bbox: BoundingBox | None | UnsetType = UNSET
    ss_header_ocr: list[OCRResult] | None | UnsetType = UNSET
    ss_header_text: str | None | UnsetType = UNSET
    ss_header_range: str | None | UnsetType = UNSET
    ss_range: str | None | UnsetType = UNSET
    ss_sheet_name: str | None | UnsetType = UNSET


class Chunk(msgspec.Struct, kw_only=True):
    chunk_id: str
    chunk_length: U32
    segments: list[Segment]
    embed: str | None = None
    content: str | None | UnsetType = UNSET


class Output(msgspec.Struct, kw_only=True):
    chunks: list[Chunk]
    file_name: str | None | UnsetType = UNSET  # the task's file name when absent
    page_count: U32 | None = None
    pdf_url: str | None = None
    extracted_json: Any = None  # deprecated by Chunkr; kept as given
    mime_type: str | None | UnsetType = UNSET
    pages: list[Page] | None | UnsetType = UNSET


_NOT_FINITE = re.compile(r"Expected `float(?: \| null)?` [<>]= -?1\.7976931348623157e\+308")


def _problem(exc: msgspec.ValidationError) -> str:
    return _NOT_FINITE.sub("Expected a finite number", str(exc))


def checked_output(output: dict[str, Any], file_name: str | None) -> tuple[dict[str, Any], bytes]:
    """``check_output``'s answer and its JSON bytes (what the service stores), encoded once."""
    try:
        parsed = msgspec.convert(output, Output)
        if parsed.file_name is UNSET:
            parsed.file_name = file_name
        full = msgspec.to_builtins(parsed)
        data = msgspec.json.encode(full)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid output: {_problem(exc)}") from None
    except UnicodeEncodeError:
        # Only from a caller in this process: a JSON body cannot hold a lone surrogate.
        raise BadRequest(
            "Invalid output: a string is not valid Unicode (a lone surrogate)"
        ) from None
    except (TypeError, ValueError) as exc:  # extracted_json holding what JSON cannot
        raise BadRequest(f"Invalid output: it cannot be written as JSON ({exc})") from None
    return full, data


def check_output(output: dict[str, Any], file_name: str | None) -> dict[str, Any]:
    """The worker's ``output`` checked against Chunkr's output types and normalised: unknown
    fields dropped, Chunkr's defaults filled, ``file_name`` the task's when absent. Raises
    ``BadRequest`` ("Invalid output: <problem> - at `<JSON path>`") for the first problem."""
    return checked_output(output, file_name)[0]


def summarise(full: dict[str, Any]) -> OutputSummary:
    """The summary of a checked output (``checked_output``'s first answer): what the service
    records with it in the ``succeeded`` event, so that answers without chunks never read it."""
    return OutputSummary(
        file_name=full.get("file_name"),
        page_count=full.get("page_count"),
        pdf_url=full.get("pdf_url"),
        chunks=len(full.get("chunks", ())),
    )


#: A stored output's top-level fields, each left undecoded (its JSON as stored).
_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_chunk_list = msgspec.json.Decoder(list[msgspec.Raw])


def stored_fields(data: bytes) -> dict[str, Any]:
    """A stored output's top-level fields, each value its JSON as stored (``msgspec.Raw``):
    encoding them copies the bytes, never decodes them, so an answer with a large output's
    chunks costs a copy of them, not a parse into Python objects and an encoding back."""
    return dict(_fields.decode(data))


def decoded(fields: dict[str, Any]) -> dict[str, Any]:
    """``stored_fields`` decoded: the output as plain builtins."""
    return {
        key: msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value
        for key, value in fields.items()
    }


def summary_of_stored(data: bytes, file_name: str | None) -> OutputSummary:
    """The summary of a stored output recorded before summaries were (its ``succeeded`` event
    has none): worked out from the blob without building its chunks. An output stored then may
    lack ``file_name`` (the task's stands) or hold what a check would now refuse; each value is
    taken as it is, as answers took it."""
    return summary_of_fields(_fields.decode(data), file_name)


def summary_of_fields(fields: dict[str, Any], file_name: str | None) -> OutputSummary:
    """The summary of an output's top-level fields, each plain or as stored JSON
    (``msgspec.Raw``); ``file_name`` stands when the output has none."""

    def value(key: str) -> Any:
        found = fields.get(key)
        return msgspec.json.decode(found) if isinstance(found, msgspec.Raw) else found

    chunks = fields.get("chunks")
    if isinstance(chunks, msgspec.Raw):
        try:
            count = len(_chunk_list.decode(chunks))
        except msgspec.ValidationError:
            count = 0
    else:
        count = len(chunks) if isinstance(chunks, list) else 0
    return OutputSummary(
        file_name=value("file_name") if "file_name" in fields else file_name,
        page_count=value("page_count"),
        pdf_url=value("pdf_url"),
        chunks=count,
    )
