"""Helpers every test suite shares: waiting for a condition, a Chunkr-shaped output, and answers
with their signed links' expiry and signature blanked (to compare answers made at other times or
by other servers)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def chunkr_output(file_name: str = "a.txt", text: str = "hello, ledger") -> dict[str, Any]:
    """An output blob shaped as Chunkr's, with every field the chunkr-ai 0.3.7 SDK requires:
    one chunk holding one segment of ``text``."""
    segment = {
        "bbox": {"left": 0.0, "top": 0.0, "width": 100.0, "height": 20.0},
        "content": text,
        "text": text,
        "page_height": 792.0,
        "page_width": 612.0,
        "page_number": 1,
        "segment_id": str(uuid.uuid4()),
        "segment_type": "Text",
        "confidence": None,
    }
    return {
        "chunks": [{"chunk_id": str(uuid.uuid4()), "chunk_length": 2, "segments": [segment]}],
        "file_name": file_name,
        "page_count": 1,
        "pdf_url": None,
    }


#: A signed file link's query (api.links): it changes with the time and the server's secret.
SIGNED = re.compile(r"\?expires=[0-9]+&signature=[0-9a-f]{64}")


def unsigned(value: Any) -> Any:
    """``value`` (an answer's JSON, or its text) with every signed link's expiry and signature
    blanked: two answers that differ only in when (or by which server) their links were signed
    compare equal, while the links' paths are still compared."""
    if isinstance(value, str):
        return SIGNED.sub("?expires=&signature=", value)
    if isinstance(value, dict):
        return {k: unsigned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsigned(v) for v in value]
    return value
