"""Property: whatever a worker sends, an output ``check_output`` accepts is one the chunkr-ai
SDK parses, as stored and after a trip through JSON (as ``get_task`` and ``poll`` receive it);
and an output it refuses is refused with a 400's message, never an exception of another kind.

The outputs are mostly valid Chunkr outputs (every field Chunkr or the SDK knows, some left out)
put through a few random mutations: a value made null, a key removed, a value swapped for one of
another type, a big or negative number, NaN or an infinity, a unicode string, an unknown key."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from chunkr_ai.api.configuration import OutputResponse
from chunkr_ai.api.task_response import TaskResponse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.contract import SEGMENT_TYPE_NAMES
from api.output import check_output
from api.refusals import BadRequest

SEGMENT_TYPES = list(SEGMENT_TYPE_NAMES)

text = st.text(max_size=12)
maybe_text = st.none() | text
number = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-1000, 10**6)
maybe_number = st.none() | number
count = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2**32 - 1])
maybe_count = st.none() | count

bbox = st.fixed_dictionaries({"left": number, "top": number, "width": number, "height": number})
ocr_result = st.fixed_dictionaries(
    {"bbox": bbox, "text": text}, optional={"confidence": maybe_number}
)
cell_style = st.fixed_dictionaries(
    {},
    optional={
        "bg_color": maybe_text,
        "text_color": maybe_text,
        "font_face": maybe_text,
        "is_bold": st.none() | st.booleans(),
        "align": st.sampled_from([None, "Left", "Center", "Right", "Justify"]),
        "valign": st.sampled_from([None, "Top", "Middle", "Bottom", "Baseline"]),
    },
)
cell = st.fixed_dictionaries(
    {"cell_id": text, "text": text, "range": text},
    optional={
        "formula": maybe_text,
        "value": maybe_text,
        "hyperlink": maybe_text,
        "style": st.none() | cell_style,
    },
)
segment = st.fixed_dictionaries(
    {
        "bbox": bbox,
        "page_height": number,
        "page_width": number,
        "page_number": count,
        "segment_id": text,
        "segment_type": st.sampled_from(SEGMENT_TYPES),
    },
    optional={
        "content": text,
        "html": text,
        "markdown": text,
        "text": text,
        "confidence": maybe_number,
        "image": maybe_text,
        "llm": maybe_text,
        "ocr": st.none() | st.lists(ocr_result, max_size=2),
        "segment_length": maybe_count,
        "embed": maybe_text,
        "description": maybe_text,
        "ss_cells": st.none() | st.lists(cell, max_size=2),
        "ss_header_bbox": st.none() | bbox,
        "ss_header_ocr": st.none() | st.lists(ocr_result, max_size=1),
        "ss_header_text": maybe_text,
        "ss_header_range": maybe_text,
        "ss_range": maybe_text,
        "ss_sheet_name": maybe_text,
    },
)
chunk = st.fixed_dictionaries(
    {"chunk_id": text, "chunk_length": count, "segments": st.lists(segment, max_size=3)},
    optional={"embed": maybe_text, "content": maybe_text},
)
page = st.fixed_dictionaries(
    {"image": text, "page_number": count, "page_height": number, "page_width": number},
    optional={"ss_sheet_name": maybe_text, "dpi": maybe_number},
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | number | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
output = st.fixed_dictionaries(
    {"chunks": st.lists(chunk, max_size=3)},
    optional={
        "file_name": maybe_text,
        "page_count": maybe_count,
        "pdf_url": maybe_text,
        "extracted_json": json_value,
        "mime_type": maybe_text,
        "pages": st.none() | st.lists(page, max_size=2),
    },
)

#: What a mutation puts in place of a value: nulls, other types, numbers out of range or not
#: finite, unicode (a lone surrogate too), enum-ish strings, empty containers.
replacement = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["", "1", "1.5", "text", "Paragraph", "null", "\ud800", "é\u200b🦀"]),
    st.sampled_from(SEGMENT_TYPES),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)
#: ... and in place of a number, a number the contract may not take (or only just takes).
hostile_number = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.sampled_from([-1, 2**32 - 1, 2**32, 2**64, 10**30, 1.0, 1.5, -0.0, 1e308, 5e-324]),
    st.sampled_from([True, "1", None]),
    st.floats(),
)
#: ... and in place of a string, unicode and what is not quite a string.
hostile_text = st.text(max_size=8) | st.sampled_from(["\ud800", "é\u200b🦀", "\x00", 1, b"x"])


def places(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``value``, depth first."""
    if isinstance(value, dict):
        for key, inner in value.items():
            out.append((value, key))
            places(inner, out)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            out.append((value, index))
            places(inner, out)
    return out


def containers(value: Any, out: list[Any]) -> list[Any]:
    if isinstance(value, dict):
        out.append(value)
        for inner in value.values():
            containers(inner, out)
    elif isinstance(value, list):
        for inner in value:
            containers(inner, out)
    return out


@st.composite
def mutated_outputs(draw: st.DrawFn) -> dict[str, Any]:
    value = draw(output)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["null", "remove", "replace", "hostile", "hostile", "unknown"]))
        if kind == "unknown":
            target = draw(st.sampled_from(containers(value, [])))
            target[draw(st.text(min_size=1, max_size=10))] = draw(replacement)
            continue
        spots = places(value, [])
        if kind == "hostile" or draw(st.booleans()):  # a scalar: where most problems are
            spots = [s for s in spots if not isinstance(s[0][s[1]], dict | list)] or spots
        if not spots:
            continue
        container, key = draw(st.sampled_from(spots))
        old = container[key]
        if kind == "null":
            container[key] = None
        elif kind == "remove":
            del container[key]
        elif kind == "hostile" and isinstance(old, int | float) and not isinstance(old, bool):
            container[key] = draw(hostile_number)
        elif kind == "hostile" and isinstance(old, str):
            container[key] = draw(hostile_text)
        else:
            container[key] = draw(replacement)
    return value


def the_sdk_parses(full: dict[str, Any]) -> None:
    parsed = OutputResponse.model_validate(full)
    # Over the wire: JSON bytes, decoded again, inside a Task as the SDK's get_task parses it.
    wire = json.loads(msgspec.json.encode(full))
    again = OutputResponse.model_validate(wire)
    assert again == parsed
    task = TaskResponse(
        **{
            "configuration": {},
            "created_at": "2026-01-01T12:00:00Z",
            "status": "Succeeded",
            "task_id": "t",
            "output": wire,
        }
    )
    assert task.output == parsed
    # The normal form is a fixed point: checking it again changes nothing.
    assert check_output(wire, "other.txt") == wire


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(candidate=mutated_outputs(), file_name=st.none() | st.text(max_size=8))
def test_an_output_check_output_accepts_is_one_the_sdk_parses(candidate, file_name):
    try:
        full = check_output(candidate, file_name)
    except BadRequest as refused:
        assert str(refused).startswith("Invalid output: ")
        event("refused")
        return
    event("accepted")
    if "file_name" not in candidate:
        assert full["file_name"] == file_name
    the_sdk_parses(full)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(candidate=output, file_name=st.none() | st.text(max_size=8))
def test_a_valid_chunkr_output_is_accepted(candidate, file_name):
    # No false refusals: every output built only from valid values passes.
    full = check_output(candidate, file_name)
    assert len(full["chunks"]) == len(candidate["chunks"])
    the_sdk_parses(full)
