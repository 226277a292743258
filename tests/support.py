"""Helpers every test suite shares: waiting for a condition, and a Chunkr-shaped output."""

from __future__ import annotations

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
