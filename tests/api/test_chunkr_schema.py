"""Real responses against Chunkr's TaskResponse, as a JSON Schema.

The schema is rebuilt here from Chunkr's own server models (its Rust ``core/src/models``:
``task.rs``, ``output.rs``, ``chunk_processing.rs``, ``segment_processing.rs``, ``llm.rs``) by
the rule its OpenAPI generator (utoipa) applies: a field is required unless it is an ``Option``
or has a serde default, an ``Option`` is nullable, and an externally tagged enum is a ``oneOf``
of one-key objects. Tasks in every state (created with the SDK's full ``Configuration``,
processing, updated, failed, cancelled, succeeded) are read over real HTTP, one by one and
listed, and must validate with no violation at all; nothing is checked by hand-picked fields.
"""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from scripts.processors import text_chunks

U32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def struct(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


STRATEGY = enum("LLM", "Auto")
GENERATION_CONFIG = struct(
    {
        "crop_image": enum("All", "Auto"),
        "format": enum("Html", "Markdown"),
        "strategy": STRATEGY,
        "embed_sources": {"type": "array", "items": enum("Content", "HTML", "Markdown", "LLM")},
        "extended_context": {"type": "boolean"},
    },
    {
        "llm": nullable({"type": "string"}),
        "html": nullable(STRATEGY),
        "markdown": nullable(STRATEGY),
    },
)
SEGMENT_TYPES = [
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
TOKENIZER = {
    "oneOf": [
        struct({"Enum": enum("Word", "Cl100kBase", "XlmRobertaBase", "BertBaseUncased")}),
        struct({"String": {"type": "string"}}),
    ]
}
CONFIGURATION = struct(
    {
        "chunk_processing": struct(
            {
                "ignore_headers_and_footers": {"type": "boolean"},
                "target_length": U32,
                "tokenizer": TOKENIZER,
            }
        ),
        "high_resolution": {"type": "boolean"},
        "ocr_strategy": enum("All", "Auto"),
        "segment_processing": struct(dict.fromkeys(SEGMENT_TYPES, GENERATION_CONFIG)),
        "segmentation_strategy": enum("LayoutAnalysis", "Page"),
        "error_handling": enum("Fail", "Continue"),
        "llm_processing": struct(
            {
                "fallback_strategy": {
                    "oneOf": [enum("None", "Default"), struct({"Model": {"type": "string"}})]
                },
                "temperature": {"type": "number"},
            },
            {"model_id": nullable({"type": "string"}), "max_completion_tokens": nullable(U32)},
        ),
    },
    {
        "expires_in": nullable({"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}),
        "input_file_url": nullable({"type": "string"}),
        "pipeline": nullable(enum("Azure", "Chunkr")),
    },
)
BBOX = struct({name: {"type": "number"} for name in ("left", "top", "width", "height")})
OCR_RESULT = struct(
    {"bbox": BBOX, "text": {"type": "string"}}, {"confidence": nullable({"type": "number"})}
)
SEGMENT = {
    **struct(
        {
            "bbox": BBOX,
            "page_height": {"type": "number"},
            "page_width": {"type": "number"},
            "page_number": U32,
            "segment_id": {"type": "string"},
            "segment_type": enum(*SEGMENT_TYPES),
            "content": {"type": "string"},
            "html": {"type": "string"},
            "markdown": {"type": "string"},
            "text": {"type": "string"},
        },
        {
            "confidence": nullable({"type": "number"}),
            "image": nullable({"type": "string"}),
            "llm": nullable({"type": "string"}),
            "ocr": nullable({"type": "array", "items": OCR_RESULT}),
        },
    ),
    # Fields a processor may add that the chunkr-ai SDK also reads (segment_length, ...).
    "additionalProperties": True,
}
CHUNK = {
    **struct(
        {
            "chunk_id": {"type": "string"},
            "chunk_length": U32,
            "segments": {"type": "array", "items": SEGMENT},
        },
        {"embed": nullable({"type": "string"})},
    ),
    "additionalProperties": True,
}
OUTPUT = struct(
    {"chunks": {"type": "array", "items": CHUNK}},
    {
        "file_name": nullable({"type": "string"}),
        "page_count": nullable(U32),
        "pdf_url": nullable({"type": "string"}),
        "extracted_json": {},
    },
)
TIME = {"type": "string", "format": "date-time"}
TASK_RESPONSE = struct(
    {
        "task_id": {"type": "string"},
        "status": enum("Starting", "Processing", "Succeeded", "Failed", "Cancelled"),
        "message": {"type": "string"},
        "created_at": TIME,
        "configuration": CONFIGURATION,
    },
    {
        "started_at": nullable(TIME),
        "finished_at": nullable(TIME),
        "expires_at": nullable(TIME),
        "output": nullable(OUTPUT),
        "task_url": nullable({"type": "string"}),
    },
)
TASK_LIST = {"type": "array", "items": TASK_RESPONSE}


def violations(instance: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def test_the_schema_is_strict_enough_to_catch_what_was_wrong():
    """The schema would have caught each fault the issue lists (so zero violations means
    something)."""
    good = {
        "task_id": "t",
        "status": "Starting",
        "message": "",
        "created_at": "2026-01-01T00:00:00Z",
        "configuration": {
            "chunk_processing": {
                "ignore_headers_and_footers": True,
                "target_length": 512,
                "tokenizer": {"Enum": "Word"},
            },
            "high_resolution": True,
            "ocr_strategy": "All",
            "segment_processing": {
                name: {
                    "crop_image": "Auto",
                    "format": "Markdown",
                    "strategy": "Auto",
                    "embed_sources": ["Content"],
                    "extended_context": False,
                }
                for name in SEGMENT_TYPES
            },
            "segmentation_strategy": "Page",
            "error_handling": "Fail",
            "llm_processing": {"fallback_strategy": "Default", "temperature": 0.0},
        },
    }
    assert violations(good, TASK_RESPONSE) == []
    merged = {
        **good["configuration"]["chunk_processing"],
        "tokenizer": {"Enum": "Word", "String": "x"},
    }
    missing = {**good["configuration"]}
    del missing["segment_processing"]
    verbatim = {**good["configuration"], "segment_processing": {"table": {}}}
    for configuration in (
        {**good["configuration"], "chunk_processing": merged},
        missing,
        verbatim,
    ):
        assert violations({**good, "configuration": configuration}, TASK_RESPONSE)
    segment = {
        "bbox": {"left": 0, "top": 0, "width": 1, "height": 1},
        "page_height": 1,
        "page_width": 1,
        "page_number": 1,
        "segment_id": "s",
        "segment_type": "Text",
        "content": "",
        "html": None,
        "markdown": "",
        "text": "",
    }
    output = {"chunks": [{"chunk_id": "c", "chunk_length": 1, "segments": [segment]}]}
    assert violations({**good, "output": output}, TASK_RESPONSE)


def full_configuration() -> Any:
    """The SDK's Configuration with every field it has set."""
    from chunkr_ai.models import (
        ChunkProcessing,
        Configuration,
        CroppingStrategy,
        EmbedSource,
        ErrorHandlingStrategy,
        FallbackStrategy,
        GenerationConfig,
        GenerationStrategy,
        LlmProcessing,
        OcrStrategy,
        Pipeline,
        SegmentationStrategy,
        SegmentFormat,
        SegmentProcessing,
        TokenizerType,
    )

    generation = GenerationConfig(
        format=SegmentFormat.HTML,
        strategy=GenerationStrategy.LLM,
        crop_image=CroppingStrategy.ALL,
        extended_context=True,
        description=True,
        llm="Describe it",
        embed_sources=[EmbedSource.CONTENT, EmbedSource.LLM],
        html=GenerationStrategy.AUTO,
        markdown=GenerationStrategy.LLM,
    )
    return Configuration(
        chunk_processing=ChunkProcessing(
            ignore_headers_and_footers=False,
            target_length=3,
            tokenizer=TokenizerType(string_value="bert-base-uncased"),
        ),
        expires_in=3600,
        error_handling=ErrorHandlingStrategy.CONTINUE,
        high_resolution=False,
        ocr_strategy=OcrStrategy.AUTO,
        segment_processing=SegmentProcessing(
            **{
                name: generation
                for name in SegmentProcessing.model_fields
                if name not in ("picture", "page")
            }
        ),
        segmentation_strategy=SegmentationStrategy.PAGE,
        pipeline=Pipeline.AZURE,
        llm_processing=LlmProcessing(
            model_id="gpt-4o",
            fallback_strategy=FallbackStrategy.model("gpt-4o-mini"),
            max_completion_tokens=0,
            temperature=1.5,
        ),
    )


@pytest.fixture(scope="module")
def tasks_in_every_state(real_server, tmp_path_factory) -> dict[str, str]:
    """One task per state, made through the SDK and the worker routes of a real server."""
    from chunkr_ai import Chunkr

    from tests.inprocess import add_key

    alice_key = add_key(real_server.db, "alice")
    worker = httpx.Client(
        base_url=real_server.api,
        headers={"Authorization": add_key(real_server.db, "pool", "worker")},
    )
    text = tmp_path_factory.mktemp("files") / "notes.md"
    text.write_text("Words to chunk, a few of them, enough for three chunks or more.\n")
    sdk = Chunkr(url=real_server.api, api_key=alice_key)
    ids: dict[str, str] = {}

    def create() -> str:
        return sdk.create_task(text, full_configuration()).task_id

    def claim(task_id: str) -> None:
        while True:
            claimed = worker.post("/worker/claim", json={"worker_id": "w"}).json()
            assert claimed is not None, "no task to claim"
            if claimed["task_id"] == task_id:
                return
            worker.post(f"/task/{claimed['task_id']}/release", json={"worker_id": "w"})

    def complete(task_id: str) -> None:
        output = text_chunks(
            text.read_bytes(), "notes.md", {"chunk_processing": {"target_length": 3}}
        )
        response = worker.post(
            f"/task/{task_id}/complete", json={"worker_id": "w", "output": output}
        )
        assert response.status_code == 200, response.text

    try:
        ids["Starting"] = create()
        ids["Cancelled"] = create()
        sdk.cancel_task(ids["Cancelled"])
        ids["Processing"] = create()
        claim(ids["Processing"])
        ids["Failed"] = create()
        claim(ids["Failed"])
        worker.post(f"/task/{ids['Failed']}/fail", json={"worker_id": "w", "error": "unreadable"})
        ids["Succeeded"] = create()
        claim(ids["Succeeded"])
        complete(ids["Succeeded"])
        ids["Starting (update)"] = create()
        claim(ids["Starting (update)"])
        complete(ids["Starting (update)"])
        sdk.update_task(ids["Starting (update)"], full_configuration())
        ids["Failed update"] = create()
        claim(ids["Failed update"])
        complete(ids["Failed update"])
        sdk.update_task(ids["Failed update"], full_configuration())
        claim(ids["Failed update"])
        worker.post(f"/task/{ids['Failed update']}/fail", json={"worker_id": "w", "error": "no"})
        ids["Cancelled update"] = create()
        claim(ids["Cancelled update"])
        complete(ids["Cancelled update"])
        sdk.update_task(ids["Cancelled update"], full_configuration())
        sdk.cancel_task(ids["Cancelled update"])
    finally:
        sdk.close()
        worker.close()
    ids["key"] = alice_key
    return ids


def test_every_state_answers_a_valid_task_response(real_server, tasks_in_every_state):
    key = tasks_in_every_state["key"]
    states = {name: tid for name, tid in tasks_in_every_state.items() if name != "key"}
    with httpx.Client(base_url=real_server.api, headers={"Authorization": key}) as alice:
        for name, task_id in states.items():
            for query in ("", "?include_chunks=false", "?base64_urls=true"):
                task = alice.get(f"/task/{task_id}{query}").json()
                assert violations(task, TASK_RESPONSE) == [], (name, query)
            assert task["status"] == name.split(" ")[0] or name.endswith("update"), name
        succeeded = alice.get(f"/task/{states['Succeeded']}").json()
        assert succeeded["output"]["chunks"], "the schema saw real chunks"
        listed = alice.get("/tasks", params={"include_chunks": "true"}).json()
        assert {t["task_id"] for t in listed} >= set(states.values())
        assert violations(listed, TASK_LIST) == []


def test_the_tasks_hold_the_sdks_whole_configuration(real_server, tasks_in_every_state):
    """Guards the fixture: the SDK really sent its full configuration, and it came back."""
    key = tasks_in_every_state["key"]
    with httpx.Client(base_url=real_server.api, headers={"Authorization": key}) as alice:
        task = alice.get(f"/task/{tasks_in_every_state['Starting']}").json()
    configuration = task["configuration"]
    assert configuration["chunk_processing"]["tokenizer"] == {"String": "bert-base-uncased"}
    assert configuration["llm_processing"]["fallback_strategy"] == {"Model": "gpt-4o-mini"}
    assert configuration["segment_processing"]["Table"]["format"] == "Html"
    assert configuration["segment_processing"]["Picture"]["crop_image"] == "All"  # default
