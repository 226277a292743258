"""Chunkr's task contract, apart from HTTP: the default configuration, Chunkr's input spellings
and the checks on a file name (the output's shape is ``api/output.py``). The service applies
them; the HTTP adapter and the command line share them through it."""

from __future__ import annotations

import unicodedata
from typing import Any

from api.refusals import BadRequest

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


def check_file_name(name: str | None) -> str | None:
    if name is None:
        return None
    if len(name) > MAX_FILE_NAME:
        raise BadRequest(f"file_name is longer than {MAX_FILE_NAME} characters")
    if not name.isprintable() and any(
        unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name
    ):
        raise BadRequest("file_name must not contain control characters")
    if "/" in name or "\\" in name:
        raise BadRequest("file_name must be a plain file name, without directories")
    return name
