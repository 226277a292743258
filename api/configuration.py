"""Chunkr's task configuration, typed, with Chunkr's semantics (its server's serde models).

Three shapes of one thing:

- **Input** (``ConfigurationInput`` and the ``*Input`` Structs): what a create or an update may
  send. Every field is optional (null means not sent); types and enums are checked (a wrong one
  is 400 naming the field); unknown fields are ignored, as serde ignores them; the deprecated
  fields (``model``, ``target_chunk_length``, ``json_schema``) are accepted and dropped.
- **Stored**: ``fields_from_input`` turns what was sent into plain JSON, one entry per top-level
  field sent, each whole and filled with its own defaults (``segment_processing`` holds all 12
  PascalCase keys). The events keep exactly that: the decider applies an update by replacing the
  top-level fields it carries, and keeps the others.
- **Response** (``Configuration``): every field, defaults filled in. ``configuration_of`` reads
  any stored configuration into it, including the shapes older releases wrote (partial, verbatim
  ``segment_processing`` with snake_case keys, a tokenizer with both ``Enum`` and ``String``):
  normalising on read, so no stored event is ever rewritten.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from api.contract import SEGMENT_TYPE_NAMES, U32, snake_case
from api.refusals import BadRequest

NonNegativeI32 = Annotated[int, Meta(ge=0, le=2**31 - 1)]

TokenizerName = Literal["Word", "Cl100kBase", "XlmRobertaBase", "BertBaseUncased"]
TOKENIZERS: frozenset[str] = frozenset(TokenizerName.__args__)  # type: ignore[attr-defined]
CropImage = Literal["All", "Auto"]
SegmentFormat = Literal["Html", "Markdown"]
GenerationStrategy = Literal["LLM", "Auto"]
EmbedSource = Literal["Content", "HTML", "Markdown", "LLM"]
OcrStrategy = Literal["All", "Auto"]
SegmentationStrategy = Literal["LayoutAnalysis", "Page"]
ErrorHandling = Literal["Fail", "Continue"]
Pipeline = Literal["Azure", "Chunkr"]

#: The 12 segment types: PascalCase (stored and answered) -> the snake_case alias (the SDK's).
SEGMENT_TYPES: dict[str, str] = {name: snake_case(name) for name in SEGMENT_TYPE_NAMES}


# -- responses (and the stored values' shape) ---------------------------------------------------


class ChunkProcessing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ignore_headers_and_footers: bool = True
    target_length: U32 = 512
    #: Exactly one of ``{"Enum": <name>}`` or ``{"String": <Hugging Face model id>}``.
    tokenizer: dict[str, str] = msgspec.field(default_factory=lambda: {"Enum": "Word"})


class GenerationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    crop_image: CropImage
    format: SegmentFormat
    strategy: GenerationStrategy
    llm: str | None
    embed_sources: list[EmbedSource]
    extended_context: bool
    #: Deprecated by Chunkr (``format`` and ``strategy`` replace them); kept as sent.
    html: GenerationStrategy | None
    markdown: GenerationStrategy | None


class SegmentProcessing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    Title: GenerationConfig
    SectionHeader: GenerationConfig
    Text: GenerationConfig
    ListItem: GenerationConfig
    Table: GenerationConfig
    Picture: GenerationConfig
    Caption: GenerationConfig
    Formula: GenerationConfig
    Footnote: GenerationConfig
    PageHeader: GenerationConfig
    PageFooter: GenerationConfig
    Page: GenerationConfig


class LlmProcessing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model_id: str | None = None
    #: ``"None"``, ``"Default"`` or ``{"Model": "<model id>"}``.
    fallback_strategy: str | dict[str, str] = "Default"
    max_completion_tokens: U32 | None = None
    temperature: float = 0.0


class Configuration(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A task's whole configuration, as every TaskResponse carries it."""

    chunk_processing: ChunkProcessing
    error_handling: ErrorHandling
    expires_in: int | None
    high_resolution: bool
    ocr_strategy: OcrStrategy
    segment_processing: SegmentProcessing
    segmentation_strategy: SegmentationStrategy
    llm_processing: LlmProcessing
    pipeline: Pipeline | None = None
    #: A presigned URL of the input (set by the renderer, never stored).
    input_file_url: str | None = None


def generation_defaults(segment_type: str) -> dict[str, Any]:
    """Chunkr's defaults for one segment type's generation config."""
    return {
        "crop_image": "All" if segment_type == "Picture" else "Auto",
        "format": "Markdown",
        "strategy": "LLM" if segment_type in ("Table", "Formula", "Page") else "Auto",
        "llm": None,
        "embed_sources": ["Content"],
        "extended_context": False,
        "html": None,
        "markdown": None,
    }


def _defaults() -> dict[str, Any]:
    return {
        "chunk_processing": {
            "ignore_headers_and_footers": True,
            "target_length": 512,
            "tokenizer": {"Enum": "Word"},
        },
        "error_handling": "Fail",
        "expires_in": None,
        "high_resolution": True,
        "ocr_strategy": "All",
        "segment_processing": {name: generation_defaults(name) for name in SEGMENT_TYPES},
        "segmentation_strategy": "LayoutAnalysis",
        "llm_processing": {
            "model_id": None,
            "fallback_strategy": "Default",
            "max_completion_tokens": None,
            "temperature": 0.0,
        },
        "pipeline": None,
    }


#: Every field's default, as stored JSON values (a fresh copy: ``_defaults()``).
DEFAULTS: dict[str, Any] = _defaults()


# -- input ------------------------------------------------------------------------------------


class ChunkProcessingInput(msgspec.Struct, kw_only=True):
    ignore_headers_and_footers: bool | None = None
    target_length: U32 | None = None
    #: ``{"Enum": name}``, ``{"String": model id}``, or (leniently) a bare name or model id.
    tokenizer: str | dict[str, str] | None = None


class GenerationConfigInput(msgspec.Struct, kw_only=True):
    crop_image: CropImage | None = None
    format: SegmentFormat | None = None
    strategy: GenerationStrategy | None = None
    llm: str | None = None
    embed_sources: list[EmbedSource] | None = None
    extended_context: bool | None = None
    html: GenerationStrategy | None = None
    markdown: GenerationStrategy | None = None


class SegmentProcessingInput(msgspec.Struct, kw_only=True):
    """Each segment type under its PascalCase key or its snake_case alias (not both)."""

    Title: GenerationConfigInput | None | UnsetType = UNSET
    SectionHeader: GenerationConfigInput | None | UnsetType = UNSET
    Text: GenerationConfigInput | None | UnsetType = UNSET
    ListItem: GenerationConfigInput | None | UnsetType = UNSET
    Table: GenerationConfigInput | None | UnsetType = UNSET
    Picture: GenerationConfigInput | None | UnsetType = UNSET
    Caption: GenerationConfigInput | None | UnsetType = UNSET
    Formula: GenerationConfigInput | None | UnsetType = UNSET
    Footnote: GenerationConfigInput | None | UnsetType = UNSET
    PageHeader: GenerationConfigInput | None | UnsetType = UNSET
    PageFooter: GenerationConfigInput | None | UnsetType = UNSET
    Page: GenerationConfigInput | None | UnsetType = UNSET
    title: GenerationConfigInput | None | UnsetType = UNSET
    section_header: GenerationConfigInput | None | UnsetType = UNSET
    text: GenerationConfigInput | None | UnsetType = UNSET
    list_item: GenerationConfigInput | None | UnsetType = UNSET
    table: GenerationConfigInput | None | UnsetType = UNSET
    picture: GenerationConfigInput | None | UnsetType = UNSET
    caption: GenerationConfigInput | None | UnsetType = UNSET
    formula: GenerationConfigInput | None | UnsetType = UNSET
    footnote: GenerationConfigInput | None | UnsetType = UNSET
    page_header: GenerationConfigInput | None | UnsetType = UNSET
    page_footer: GenerationConfigInput | None | UnsetType = UNSET
    page: GenerationConfigInput | None | UnsetType = UNSET


class LlmProcessingInput(msgspec.Struct, kw_only=True):
    model_id: str | None = None
    fallback_strategy: Literal["None", "Default"] | dict[str, str] | None = None
    max_completion_tokens: U32 | None = None
    temperature: float | None = None


class ConfigurationInput(msgspec.Struct, kw_only=True):
    """The Chunkr configuration fields a create or an update may send (the SDK's
    ``Configuration``). Unknown fields are ignored."""

    chunk_processing: ChunkProcessingInput | None = None
    expires_in: NonNegativeI32 | None = None
    error_handling: ErrorHandling | None = None
    high_resolution: bool | None = None
    #: ``Off`` is read as ``Auto``, as Chunkr reads it.
    ocr_strategy: Literal["All", "Auto", "Off"] | None = None
    segment_processing: SegmentProcessingInput | None = None
    segmentation_strategy: SegmentationStrategy | None = None
    pipeline: Pipeline | None = None
    llm_processing: LlmProcessingInput | None = None
    #: Deprecated by Chunkr: accepted, whatever their value, and dropped.
    model: Any = None
    target_chunk_length: Any = None
    json_schema: Any = None


DEPRECATED_FIELDS = ("model", "target_chunk_length", "json_schema")
#: The top-level fields whose values are objects with fields of their own.
NESTED_FIELDS = frozenset({"chunk_processing", "segment_processing", "llm_processing"})


def _given(struct: msgspec.Struct, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The fields (of ``names``, else all) of an input Struct that were sent with a value (null
    is not sent)."""
    return {
        name: value
        for name in (names or struct.__struct_fields__)
        if (value := getattr(struct, name)) is not None and value is not UNSET
    }


def tokenizer_value(value: str | dict[str, str], where: str) -> dict[str, str]:
    """``{"Enum": name}`` or ``{"String": model id}``; BadRequest naming ``where`` otherwise."""
    if isinstance(value, str):
        # Lenient, as the chunkr-ai SDK: a bare known name is that enum, anything else a model id.
        return {"Enum": value} if value in TOKENIZERS else {"String": value}
    if len(value) != 1 or not value.keys() <= {"Enum", "String"}:
        raise BadRequest(
            f"Invalid configuration: {where}: expected exactly one of "
            '{"Enum": <tokenizer>} or {"String": <model id>}, '
            f"got keys {sorted(value)}"
        )
    if "Enum" in value and value["Enum"] not in TOKENIZERS:
        raise BadRequest(
            f"Invalid configuration: {where}.Enum: {value['Enum']!r} is not one of "
            f"{', '.join(sorted(TOKENIZERS))}"
        )
    if "String" in value and not value["String"]:
        raise BadRequest(f"Invalid configuration: {where}.String: must not be empty")
    return dict(value)


def fallback_value(value: str | dict[str, str], where: str) -> str | dict[str, str]:
    if isinstance(value, str):
        return value
    if list(value) != ["Model"] or not value["Model"]:
        raise BadRequest(
            f'Invalid configuration: {where}: expected "None", "Default" or {{"Model": <model id>}}'
        )
    return {"Model": value["Model"]}


def _segment_processing(sent: SegmentProcessingInput) -> dict[str, Any]:
    stored = {}
    for pascal, snake in SEGMENT_TYPES.items():
        by_pascal, by_snake = getattr(sent, pascal), getattr(sent, snake)
        if by_pascal is not UNSET and by_snake is not UNSET:
            raise BadRequest(
                f"Invalid configuration: segment_processing: {pascal} is given twice "
                f"(as {snake} and as {pascal})"
            )
        config = by_pascal if by_pascal is not UNSET else by_snake
        values = generation_defaults(pascal)
        if isinstance(config, GenerationConfigInput):
            values.update(_given(config))
        stored[pascal] = values
    return stored


def fields_from_input(sent: ConfigurationInput) -> dict[str, Any]:
    """The stored form of what a create or an update sent (a body Struct's other fields, such
    as ``file``, are not configuration): each top-level field sent, whole and with its own
    defaults filled in; deprecated fields dropped."""
    fields: dict[str, Any] = {}
    for name, value in _given(sent, ConfigurationInput.__struct_fields__).items():
        if name in DEPRECATED_FIELDS:
            continue
        if name == "chunk_processing":
            # A fresh default tokenizer: the stored field must share nothing with DEFAULTS.
            chunking = {**DEFAULTS["chunk_processing"], "tokenizer": {"Enum": "Word"}}
            chunking.update(_given(value))
            if value.tokenizer is not None:
                chunking["tokenizer"] = tokenizer_value(
                    value.tokenizer, "chunk_processing.tokenizer"
                )
            fields[name] = chunking
        elif name == "llm_processing":
            llm = {**DEFAULTS["llm_processing"], **_given(value)}
            if value.fallback_strategy is not None:
                llm["fallback_strategy"] = fallback_value(
                    value.fallback_strategy, "llm_processing.fallback_strategy"
                )
            fields[name] = llm
        elif name == "segment_processing":
            fields[name] = _segment_processing(value)
        elif name == "ocr_strategy":
            fields[name] = "Auto" if value == "Off" else value
        else:
            fields[name] = value
    return fields


def parse_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """``fields_from_input`` of plain JSON (the command line's, a test's): BadRequest naming
    the field when a value has the wrong type or is outside its enum."""
    try:
        sent = msgspec.convert(raw, ConfigurationInput)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid configuration: {exc}") from None
    return fields_from_input(sent)


# -- reading what is stored ---------------------------------------------------------------------


def configuration_of(stored: dict[str, Any]) -> Configuration:
    """The whole configuration a stored one stands for: defaults for the fields not stored.
    Configurations this release stored convert directly; older shapes are normalised field by
    field (a value that no longer checks is read as its default)."""
    try:
        configuration = msgspec.convert({**DEFAULTS, **stored}, Configuration)
    except msgspec.ValidationError:
        return _normalised(stored)
    tokenizer = configuration.chunk_processing.tokenizer
    if len(tokenizer) != 1 or (tokenizer.get("Enum", "Word") not in TOKENIZERS):
        return _normalised(stored)
    return configuration


def _normalised(stored: dict[str, Any]) -> Configuration:
    fields = _defaults()
    for name, value in stored.items():
        if name not in fields:
            continue
        if name == "chunk_processing" and isinstance(value, dict):
            tokenizer = value.get("tokenizer")
            if isinstance(tokenizer, dict) and len(tokenizer) > 1 and "String" in tokenizer:
                # An older release merged a sent {"String": ...} into the {"Enum": "Word"}
                # default: what was sent is the String.
                value = {**value, "tokenizer": {"String": tokenizer["String"]}}
        if name == "segment_processing" and isinstance(value, dict):
            value = _readable_segments(value)
        try:
            read = fields_from_input(msgspec.convert({name: value}, ConfigurationInput))
        except (msgspec.ValidationError, BadRequest):
            continue
        if name in read:
            fields[name] = read[name]
    return msgspec.convert(fields, Configuration)


def _readable_segments(stored: dict[str, Any]) -> dict[str, Any]:
    """An older release's verbatim ``segment_processing``, keeping only what still checks:
    known keys (the PascalCase one when both spellings are there) and valid fields."""
    readable: dict[str, Any] = {}
    for pascal, snake in SEGMENT_TYPES.items():
        config = stored.get(pascal, stored.get(snake))
        if not isinstance(config, dict):
            continue
        good = {}
        for field, value in config.items():
            try:
                msgspec.convert({field: value}, GenerationConfigInput)
            except msgspec.ValidationError:
                continue
            good[field] = value
        readable[pascal] = good
    return readable


def unknown_fields(body: dict[str, Any], shape: type[msgspec.Struct], path: str = "") -> list[str]:
    """The paths of the fields in ``body`` that ``shape`` (an input Struct) does not know, which
    its decoding ignored: they are counted in the request's log line."""
    known = _known_fields(shape)
    found = []
    for key, value in body.items():
        if key not in known:
            found.append(f"{path}{key}")
            continue
        inner = known[key]
        if inner is not None and isinstance(value, dict):
            found.extend(unknown_fields(value, inner, f"{path}{key}."))
    return found


@functools.cache
def _known_fields(shape: type[msgspec.Struct]) -> dict[str, type[msgspec.Struct] | None]:
    """Each field's name in JSON -> the Struct its value holds, if any (resolving the type
    hints costs hundreds of microseconds: done once per shape)."""
    return {field.encode_name: _struct_of(field.type) for field in msgspec.structs.fields(shape)}


def _struct_of(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type in ``annotation`` (``X | None | UnsetType`` included), if any."""
    for candidate in getattr(annotation, "__args__", (annotation,)):
        if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
            return candidate
    return None
