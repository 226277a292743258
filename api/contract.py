"""Chunkr's task contract, apart from HTTP: the checks on the names a caller gives (a file's, a
worker's). The configuration is ``api/configuration.py``, the output's shape ``api/output.py``.
The service applies them; the HTTP adapter and the command line share them through it."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from msgspec import Meta

from api.refusals import BadRequest

#: Chunkr's ``u32`` (counts, lengths, page numbers, token limits).
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]

#: Chunkr's 12 segment types, in its order: a segment's ``segment_type`` and the keys of a
#: configuration's ``segment_processing``.
SegmentType = Literal[
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
SEGMENT_TYPE_NAMES: tuple[str, ...] = SegmentType.__args__  # type: ignore[attr-defined]


def snake_case(name: str) -> str:
    """``SectionHeader`` -> ``section_header`` (the chunkr-ai SDK's spelling of a type)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


MAX_FILE_NAME = 255
MAX_WORKER_ID = 200

#: Categories of characters no name may hold: controls (Cc), format characters (Cf: the
#: bidirectional overrides that make ``exe.txt`` display as ``txt.exe``, zero-width spaces,
#: invisible joiners), line and paragraph separators, unassigned and private-use code points,
#: surrogates.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn", "Co", "Cs"})


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` no name may hold, as ``U+XXXX``; None if there is none."""
    for ch in text:
        if unicodedata.category(ch) in UNSAFE_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


def check_file_name(name: str | None) -> str | None:
    """A file name as given, or BadRequest saying what is wrong with it: empty, ``.`` or ``..``,
    a path, too long, or holding a control, format (bidirectional override, zero-width) or
    unassigned character."""
    if name is None:
        return None
    if not name.strip():
        raise BadRequest("file_name must not be empty")
    if name in (".", ".."):
        raise BadRequest("file_name must be a file name, not . or ..")
    if len(name) > MAX_FILE_NAME:
        raise BadRequest(f"file_name is longer than {MAX_FILE_NAME} characters")
    found = unsafe_character(name)
    if found is not None:
        raise BadRequest(
            "file_name must not contain control characters or format characters such as "
            f"bidirectional overrides ({found})"
        )
    if "/" in name or "\\" in name:
        raise BadRequest("file_name must be a plain file name, without directories")
    return name


def check_worker_id(worker_id: str) -> str:
    """A worker id as given, or BadRequest: 1 to 200 characters, none of them a control, format
    or unassigned character (two ids that look alike must be alike)."""
    if not worker_id or len(worker_id) > MAX_WORKER_ID:
        raise BadRequest(f"worker_id must be 1 to {MAX_WORKER_ID} characters")
    found = unsafe_character(worker_id)
    if found is not None:
        raise BadRequest(
            "worker_id must not contain control characters or format characters such as "
            f"bidirectional overrides ({found})"
        )
    return worker_id
