"""Chunkr's configuration, field for field: types and enums checked (400 naming the field),
PascalCase segment types with their snake_case aliases, every field answered with its defaults,
an update replacing each sent field whole, unknown and deprecated fields ignored, and the
shapes older releases stored read back normalised (no stored event is rewritten)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from api.configuration import (
    DEFAULTS,
    SEGMENT_TYPES,
    configuration_of,
    generation_defaults,
    parse_fields,
)
from api.refusals import BadRequest
from ledger.commands import CreateTask
from ledger.events import blob_ref
from ledger.log import Actor, Envelope
from tests.inprocess import add_key

BERT = {"String": "bert-base-uncased"}


def full_segments(**overrides: dict) -> dict:
    return {
        name: {**generation_defaults(name), **overrides.get(name, {})} for name in SEGMENT_TYPES
    }


# -- the contract, without HTTP ---------------------------------------------------------------


def test_every_segment_type_has_chunkrs_defaults():
    segments = DEFAULTS["segment_processing"]
    assert list(segments) == [
        "Title",
        "SectionHeader",
        "Text",
        "ListItem",
        "Table",
        "Picture",
        "Caption",
        "Formula",
        "Footnote",
        "PageHeader",
        "PageFooter",
        "Page",
    ]
    assert {n for n, c in segments.items() if c["strategy"] == "LLM"} == {
        "Table",
        "Formula",
        "Page",
    }
    assert {n for n, c in segments.items() if c["crop_image"] == "All"} == {"Picture"}
    assert all(
        c["format"] == "Markdown" and c["embed_sources"] == ["Content"] for c in segments.values()
    )


def test_a_sent_field_is_stored_whole_with_its_own_defaults():
    fields = parse_fields(
        {
            "chunk_processing": {"tokenizer": BERT},
            "segment_processing": {"table": {"format": "Html"}, "Bogus": {"strategy": 1}},
            "llm_processing": {"max_completion_tokens": 0, "temperature": 7.5},
            "ocr_strategy": "Off",
            "model": "Fast",
            "target_chunk_length": 9,
            "json_schema": {"anything": ["goes"]},
        }
    )
    assert fields == {
        "chunk_processing": {
            "ignore_headers_and_footers": True,
            "target_length": 512,
            "tokenizer": BERT,
        },
        "segment_processing": full_segments(Table={"format": "Html"}),
        "llm_processing": {
            "model_id": None,
            "fallback_strategy": "Default",
            "max_completion_tokens": 0,
            "temperature": 7.5,
        },
        "ocr_strategy": "Auto",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"chunk_processing": {"tokenizer": {"Enum": "Word", **BERT}}}, "exactly one of"),
        ({"chunk_processing": {"tokenizer": {}}}, "exactly one of"),
        ({"chunk_processing": {"tokenizer": {"Enum": "Words"}}}, "tokenizer.Enum: 'Words'"),
        ({"chunk_processing": {"target_length": -1}}, "$.chunk_processing.target_length"),
        ({"segment_processing": {"Bogus": {}, "Text": {"strategy": "Ignore"}}}, "Text.strategy"),
        ({"segment_processing": {"text": {"embed_sources": ["Pixels"]}}}, "embed_sources[0]"),
        ({"segment_processing": {"text": {}, "Text": {}}}, "Text is given twice"),
        ({"llm_processing": {"fallback_strategy": "Sometimes"}}, "fallback_strategy"),
        ({"llm_processing": {"fallback_strategy": {"Model": ""}}}, "fallback_strategy"),
        ({"segmentation_strategy": "Pages"}, "$.segmentation_strategy"),
        ({"error_handling": True}, "$.error_handling"),
    ],
)
def test_a_wrong_type_or_enum_is_refused_naming_the_field(raw, message):
    with pytest.raises(BadRequest, match="^Invalid configuration: ") as info:
        parse_fields(raw)
    assert message in str(info.value)


def test_what_older_releases_stored_is_read_normalised():
    # A configuration as releases before this one could store it: merged tokenizer, verbatim
    # segment_processing (snake_case, unknown keys, values outside the enums), a deprecated
    # field, and no llm_processing at all.
    stored = {
        "chunk_processing": {
            "ignore_headers_and_footers": False,
            "target_length": 64,
            "tokenizer": {"Enum": "Word", **BERT},
        },
        "segment_processing": {
            "table": {"format": "Html", "strategy": "Ignore"},
            "Bogus": {},
            "text": None,
            "Title": {"markdown": -58800, "crop_image": "All"},
        },
        "json_schema": {"x": 1},
        "expires_in": 60,
    }
    configuration = configuration_of(stored)
    answered = json.loads(json.dumps(to_json(configuration)))
    assert answered["chunk_processing"] == {
        "ignore_headers_and_footers": False,
        "target_length": 64,
        "tokenizer": BERT,
    }
    assert answered["segment_processing"] == full_segments(
        Table={"format": "Html"}, Title={"crop_image": "All"}
    )
    assert answered["llm_processing"] == DEFAULTS["llm_processing"]
    assert answered["expires_in"] == 60
    assert "json_schema" not in answered


def to_json(value):
    import msgspec

    return msgspec.to_builtins(value)


# -- over HTTP --------------------------------------------------------------------------------


def test_every_response_carries_the_whole_configuration(alice, create):
    task = create(alice)
    configuration = task["configuration"]
    assert configuration["segment_processing"] == DEFAULTS["segment_processing"]
    assert configuration["chunk_processing"] == DEFAULTS["chunk_processing"]
    assert configuration["llm_processing"] == DEFAULTS["llm_processing"]
    assert (configuration["ocr_strategy"], configuration["high_resolution"]) == ("All", True)
    assert configuration["input_file_url"]
    listed = {t["task_id"]: t for t in alice.get("/tasks").json()}
    assert listed[task["task_id"]]["configuration"] == configuration


def test_a_string_tokenizer_is_kept_not_merged_into_the_default(alice, create):
    task = create(alice, chunk_processing={"tokenizer": BERT})
    assert task["configuration"]["chunk_processing"]["tokenizer"] == BERT
    got = alice.get(f"/task/{task['task_id']}").json()
    assert got["configuration"]["chunk_processing"]["tokenizer"] == BERT


def test_update_replaces_each_sent_field_whole_and_keeps_the_others(alice, create, ledger):
    task = create(
        alice,
        chunk_processing={"target_length": 100, "tokenizer": BERT},
        segment_processing={"table": {"format": "Html", "strategy": "Auto"}},
        high_resolution=False,
    )
    assert task["configuration"]["segment_processing"] == full_segments(
        Table={"format": "Html", "strategy": "Auto"}
    )
    ledger.succeed(task["task_id"])
    response = alice.patch(
        f"/task/{task['task_id']}/parse",
        json={
            "chunk_processing": {"target_length": 0},
            "segment_processing": {"Table": {"crop_image": "All"}},
        },
    )
    assert response.status_code == 200, response.text
    configuration = response.json()["configuration"]
    # chunk_processing is the one sent (its tokenizer back to the default), not a merge.
    assert configuration["chunk_processing"] == {
        "ignore_headers_and_footers": True,
        "target_length": 0,
        "tokenizer": {"Enum": "Word"},
    }
    # One Table key (the alias and the PascalCase key are the same field), the sent field and
    # the defaults: the earlier format/strategy went with the replaced segment_processing.
    assert configuration["segment_processing"] == full_segments(Table={"crop_image": "All"})
    assert configuration["high_resolution"] is False  # not sent: kept
    assert alice.get(f"/task/{task['task_id']}").json()["configuration"] == configuration


def test_chunkrs_valid_zeroes_and_an_unbounded_temperature_are_accepted(alice, create):
    task = create(
        alice,
        chunk_processing={"target_length": 0},
        llm_processing={
            "max_completion_tokens": 0,
            "temperature": 3.5,
            "fallback_strategy": {"Model": "m"},
        },
    )
    assert task["configuration"]["chunk_processing"]["target_length"] == 0
    assert task["configuration"]["llm_processing"] == {
        "model_id": None,
        "fallback_strategy": {"Model": "m"},
        "max_completion_tokens": 0,
        "temperature": 3.5,
    }


def test_unknown_and_deprecated_fields_are_ignored(alice, create):
    task = create(
        alice,
        bogus=1,
        model="HighQuality",
        target_chunk_length=7,
        json_schema={"title": "x"},
        chunk_processing={"size": 3, "target_length": 9},
        segment_processing={"Text": {"description": True}},
    )
    configuration = task["configuration"]
    for name in ("bogus", "model", "target_chunk_length", "json_schema"):
        assert name not in configuration
    assert configuration["chunk_processing"]["target_length"] == 9
    assert "size" not in configuration["chunk_processing"]
    assert "description" not in configuration["segment_processing"]["Text"]


def test_a_task_stored_by_an_older_release_is_answered_normalised(alice, server, ledger):
    # Written as an older release wrote it (no typed configuration then); read, never rewritten.
    old = {
        "chunk_processing": {"target_length": 512, "tokenizer": {"Enum": "Word", **BERT}},
        "segment_processing": {"table": {"strategy": "Ignore"}, "Bogus": {}},
        "model": "Fast",
    }
    now = datetime.now(UTC)
    task_id = "01000000-0000-7000-8000-00000000c0de"
    ledger.store.handler.execute(
        CreateTask(
            task_id=task_id,
            at=now,
            owner="alice",
            configuration=old,
            file=blob_ref(b"old"),
            file_name="old.txt",
        ),
        Envelope(recorded_at=now, actor=Actor(key_id=None, role="admin")),
        blobs=[b"old"],
    )
    got = alice.get(f"/task/{task_id}")
    assert got.status_code == 200, got.text
    configuration = got.json()["configuration"]
    assert configuration["chunk_processing"]["tokenizer"] == BERT
    assert configuration["segment_processing"] == DEFAULTS["segment_processing"]
    assert "model" not in configuration
    # The event itself keeps its old shape.
    (created,) = ledger.store.history(task_id)
    assert created.event.configuration == old


def test_the_log_line_counts_the_ignored_fields(real_server, create):
    with real_server.client(add_key(real_server.db, "alice")) as alice:
        response = alice.post(
            "/task/parse",
            json={"file": "aGk=", "bogus": 1, "chunk_processing": {"size": 2}},
            headers={"X-Request-Id": "ignored-7"},
        )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 5
    mine: list[dict] = []
    while not mine and time.monotonic() < deadline:
        mine = [
            line
            for raw in real_server.log_path.read_text().splitlines()
            if raw.startswith("{") and (line := json.loads(raw)).get("request_id") == "ignored-7"
        ]
        time.sleep(0.05)
    (line,) = mine
    assert line["ignored_fields"] == 2
    assert line["ignored"] == ["bogus", "chunk_processing.size"]


def test_unknown_fields_cannot_set_what_the_server_decides(alice, create):
    task = create(alice, owner="bob", admin=True, status="Succeeded", task_id="mine")
    assert task["status"] == "Starting" and task["task_id"] != "mine"
    assert task["task_id"] in {t["task_id"] for t in alice.get("/tasks").json()}
