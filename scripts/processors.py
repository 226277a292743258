"""Processors: what a worker does with a task's input.

A processor is any function ``(data: bytes, file_name: str | None, configuration: dict)``
returning Chunkr-shaped output: a dict (``{"chunks": [...], "file_name": ..., "page_count": ...,
"pdf_url": ...}``) or a ``StreamedOutput`` whose ``chunks`` is an iterator (the worker encodes
them one at a time, so a big output never sits in memory as Python objects). Raise
``ProcessingError("message")`` to fail the task with that message. Run your own with
``taskledger worker --processor mypackage.module:function``.

The reference processor, ``stream_text_chunks`` (``text_chunks`` gives the same as one dict),
handles text-like files (plain text, Markdown, HTML, JSON): it splits the words into chunks of
``chunk_processing.target_length`` words (default 512), each chunk one ``Text`` segment with
every field the chunkr-ai SDK requires. Its ``content``, ``text`` and ``markdown`` are the
chunk's words and its ``html`` the same words escaped in a ``<p>``: strings, never null, as
Chunkr sends them (the server refuses a null; see ``api/output.py``).
"""

from __future__ import annotations

import html
import html.parser
import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

Processor = Callable[[bytes, "str | None", dict[str, Any]], "dict[str, Any] | StreamedOutput"]

TEXT_EXTENSIONS = {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".json", ".csv", ".rst"}
PAGE_WIDTH, PAGE_HEIGHT = 612.0, 792.0  # a US Letter page in points, for the segment boxes


class ProcessingError(Exception):
    """The input cannot be processed; the message becomes the task's Failed message."""


class _TextOfHtml(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def extension(file_name: str | None) -> str:
    if not file_name or "." not in file_name:
        return ""
    return "." + file_name.rsplit(".", 1)[1].lower()


def to_text(data: bytes, file_name: str | None) -> str:
    """The text of a text-like input; ProcessingError("Unsupported file type") otherwise."""
    ext = extension(file_name)
    if ext and ext not in TEXT_EXTENSIONS:
        raise ProcessingError("Unsupported file type")
    if b"\x00" in data:
        raise ProcessingError("Unsupported file type")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProcessingError("Unsupported file type") from None
    if ext in (".html", ".htm") or (
        not ext and text.lstrip()[:15].lower().startswith(("<!doctype html", "<html"))
    ):
        parser = _TextOfHtml()
        parser.feed(text)
        return " ".join(parser.parts)
    if ext == ".json":
        try:
            json.loads(text)
        except ValueError:
            raise ProcessingError("Invalid JSON file") from None
    return text


def target_length(configuration: dict[str, Any]) -> int:
    chunking = configuration.get("chunk_processing") or {}
    value = chunking.get("target_length") or configuration.get("target_chunk_length") or 512
    return max(1, int(value))


class StreamedOutput(msgspec.Struct, kw_only=True):
    """An output whose chunks come one at a time: the worker encodes each as it comes, so its
    memory holds the encoded output (which the server's limit bounds) and one chunk, never the
    whole output as Python objects (which costs tens of times more)."""

    chunks: Iterator[dict[str, Any]]
    file_name: str | None = None
    page_count: int | None = None
    pdf_url: str | None = None


_WORD = re.compile(r"\S+")


def iter_text_chunks(
    data: bytes, file_name: str | None, configuration: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Chunks of ``target_length`` words, one Text segment each, made one at a time (the words
    are found in the text as they are needed: no list of every word)."""
    text = to_text(data, file_name)
    size = target_length(configuration)
    piece: list[str] = []
    for match in _WORD.finditer(text):
        piece.append(match.group())
        if len(piece) == size:
            yield _chunk(piece)
            piece = []
    if piece:
        yield _chunk(piece)


def _chunk(piece: list[str]) -> dict[str, Any]:
    content = " ".join(piece)
    segment: dict[str, Any] = {
        "bbox": {"left": 0.0, "top": 0.0, "width": PAGE_WIDTH, "height": PAGE_HEIGHT},
        "content": content,
        "text": content,
        "markdown": content,
        "html": f"<p>{html.escape(content, quote=False)}</p>",
        "page_height": PAGE_HEIGHT,
        "page_width": PAGE_WIDTH,
        "page_number": 1,
        "segment_id": str(uuid.uuid4()),
        "segment_type": "Text",
        "segment_length": len(piece),
        "confidence": None,
        "ocr": [],
    }
    return {
        "chunk_id": str(uuid.uuid4()),
        "chunk_length": len(piece),
        "segments": [segment],
        "embed": content,
        "content": content,
    }


def stream_text_chunks(
    data: bytes, file_name: str | None, configuration: dict[str, Any]
) -> StreamedOutput:
    """The reference processor (the worker's default): ``text_chunks``, streamed."""
    chunks = iter_text_chunks(data, file_name, configuration)
    return StreamedOutput(chunks=chunks, file_name=file_name, page_count=1)


def text_chunks(
    data: bytes, file_name: str | None, configuration: dict[str, Any]
) -> dict[str, Any]:
    """The reference processor's output as one dict (chunks of ``target_length`` words, one Text
    segment each)."""
    chunks = list(iter_text_chunks(data, file_name, configuration))
    return {"chunks": chunks, "file_name": file_name, "page_count": 1, "pdf_url": None}


class OutputTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Output too large ({size} bytes, limit {limit} bytes)")
        self.size, self.limit = size, limit


_encode = msgspec.json.Encoder().encode


def encode_output(output: dict[str, Any] | StreamedOutput, limit: int) -> bytes:
    """The output as JSON, or OutputTooLarge once it passes ``limit`` bytes. A streamed output is
    encoded a chunk at a time; past the limit its chunks are still counted (to say how large it
    is) but no longer kept."""
    if not isinstance(output, StreamedOutput):
        encoded = _encode(output)
        if len(encoded) > limit:
            raise OutputTooLarge(len(encoded), limit)
        return encoded
    tail = _encode(
        {"file_name": output.file_name, "page_count": output.page_count, "pdf_url": output.pdf_url}
    )
    buffer = bytearray(b'{"chunks":[')
    size, kept = len(buffer) + len(tail) + 1, True
    for index, chunk in enumerate(output.chunks):
        encoded = _encode(chunk)
        size += len(encoded) + (1 if index else 0)
        if kept and size > limit:
            kept = False
            buffer = bytearray()
        if kept:
            if index:
                buffer += b","
            buffer += encoded
    if not kept:
        raise OutputTooLarge(size, limit)
    buffer += b"],"
    buffer += tail[1:]
    return bytes(buffer)


def load_processor(spec: str) -> Processor:
    """``module:function`` -> the function."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"processor must be module:function, not {spec!r}")
    func = getattr(importlib.import_module(module_name), attr)
    if not callable(func):
        raise ValueError(f"{spec} is not callable")
    return func
