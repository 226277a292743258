"""File types judged by their first bytes: what ``sniff`` says of each of Chunkr's types, and
``serve --file-types chunkr`` refusing anything else at create (nothing appended)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator

import pytest

from api import filetypes
from api.composition import close_service, open_service
from api.keys import create_key
from api.refusals import BadRequest
from api.service import TaskLedger
from api.settings import settings_for


def ooxml(main_part: str) -> bytes:
    """A minimal Office Open XML package whose main part is ``main_part``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("[Content_Types].xml", "<Types/>")
        package.writestr(main_part, "<document/>")
    return buffer.getvalue()


def plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("notes.txt", "hello")
    return buffer.getvalue()


OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504

SAMPLES = [
    (b"%PDF-1.7\n%...", "scan.bin", filetypes.PDF),
    (b"\xff\xd8\xff\xe0\0\x10JFIF", None, filetypes.JPEG),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "x.pdf", filetypes.PNG),
    (OLE, "report.DOC", filetypes.DOC),
    (OLE, "sheet.xls", filetypes.XLS),
    (OLE, "deck.ppt", filetypes.PPT),
    (OLE, None, filetypes.OLE),
    (ooxml("word/document.xml"), "a.pdf", filetypes.DOCX),
    (ooxml("xl/workbook.xml"), None, filetypes.XLSX),
    (ooxml("ppt/presentation.xml"), None, filetypes.PPTX),
]


@pytest.mark.parametrize(("data", "name", "expected"), SAMPLES)
def test_each_of_chunkrs_types_is_known_by_its_bytes_not_its_name(data, name, expected):
    assert filetypes.sniff(data, name) == expected
    assert filetypes.accepted(expected, "chunkr")


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"hello, ledger\n", "a.pdf"),
        (b"# Title\n", "doc.md"),
        (plain_zip(), "a.docx"),
        (b"PK\x03\x04 not really a zip", "a.xlsx"),
        (b"GIF89a", "a.gif"),
        (b"%PD", "short.pdf"),
    ],
)
def test_other_files_are_unknown_and_only_the_any_policy_takes_them(data, name):
    assert filetypes.sniff(data, name) is None
    assert not filetypes.accepted(None, "chunkr")
    assert filetypes.accepted(None, "any")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def open_with(database, file_types: str) -> AsyncIterator[TaskLedger]:
    service = open_service(settings_for(database, sweep_interval=0, file_types=file_types))
    yield service
    close_service(service)


@pytest.fixture
async def chunkr_only(database) -> AsyncIterator[TaskLedger]:
    async for service in open_with(database, "chunkr"):
        yield service


@pytest.fixture
async def any_file(database) -> AsyncIterator[TaskLedger]:
    async for service in open_with(database, "any"):
        yield service


@pytest.mark.anyio
async def test_chunkr_policy_refuses_an_unsupported_file_at_create_and_appends_nothing(
    chunkr_only,
):
    alice = chunkr_only.authenticate(create_key(chunkr_only.store.records, "alice", "user")[1])
    with pytest.raises(BadRequest, match="^Unsupported file type"):
        await chunkr_only.create(alice, file=b"plain text, named as a PDF", file_name="a.pdf")
    assert chunkr_only.store.log.last_position() == 0
    created = await chunkr_only.create(alice, file=ooxml("word/document.xml"), file_name="a")
    assert created.state.media_type == filetypes.DOCX


@pytest.mark.anyio
async def test_any_policy_takes_every_file_and_records_what_it_is(any_file):
    alice = any_file.authenticate(create_key(any_file.store.records, "alice", "user")[1])
    text = await any_file.create(alice, file=b"hello", file_name="a.txt")
    pdf = await any_file.create(alice, file=b"%PDF-1.4\n", file_name="a.txt")
    assert (text.state.media_type, pdf.state.media_type) == (None, filetypes.PDF)
    history = (await any_file.history(alice, pdf.state.task_id)).events
    assert history[0].event.media_type == filetypes.PDF
