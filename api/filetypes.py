"""What an input file is, by its first bytes (never by its name), and which types Chunkr takes.

Chunkr accepts PDF, Word, PowerPoint and Excel (old and new formats), JPEG and PNG, and refuses
anything else at create with 400 "Unsupported file type". ``taskledger serve --file-types
chunkr`` does the same; the default (``any``) takes every file and leaves the verdict to the
processor. Either way the sniffed type is recorded on the task (``media_type``): it says whether
the input is a PDF, which is what ``pdf_url`` links to.
"""

from __future__ import annotations

import io
import zipfile

PDF = "application/pdf"
JPEG = "image/jpeg"
PNG = "image/png"
DOC = "application/msword"
XLS = "application/vnd.ms-excel"
PPT = "application/vnd.ms-powerpoint"
#: An OLE2 compound file (doc, xls and ppt are all one) whose name does not say which.
OLE = "application/x-ole-storage"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

#: The types Chunkr processes.
CHUNKR_TYPES = frozenset({PDF, JPEG, PNG, DOC, XLS, PPT, OLE, DOCX, XLSX, PPTX})

#: ``serve --file-types`` choices.
FILE_TYPE_POLICIES = ("any", "chunkr")

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_BY_EXTENSION = {".doc": DOC, ".dot": DOC, ".xls": XLS, ".xlt": XLS, ".ppt": PPT, ".pps": PPT}
#: The folder an Office Open XML package keeps its main part in.
_OOXML_PARTS = (("word/", DOCX), ("xl/", XLSX), ("ppt/", PPTX))


def sniff(data: bytes, file_name: str | None = None) -> str | None:
    """The media type ``data`` starts like, or None when it is none of the known types. The name
    only tells the three old Office formats apart, which share one container."""
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(_OLE_MAGIC):
        suffix = (
            "." + file_name.rsplit(".", 1)[-1].lower() if file_name and "." in file_name else ""
        )
        return _OLE_BY_EXTENSION.get(suffix, OLE)
    if data.startswith(b"PK\x03\x04"):
        return _ooxml(data)
    return None


def _ooxml(data: bytes) -> str | None:
    """DOCX, XLSX or PPTX by the parts the package holds (its central directory only: no part
    is decompressed), or None for any other zip file."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            names = package.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return None
    if "[Content_Types].xml" not in names:
        return None
    for prefix, media_type in _OOXML_PARTS:
        if any(name.startswith(prefix) for name in names):
            return media_type
    return None


def accepted(media_type: str | None, policy: str) -> bool:
    """Whether ``serve --file-types policy`` takes a file of this type."""
    return policy == "any" or media_type in CHUNKR_TYPES
