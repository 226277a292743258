"""Content-addressed blobs (input files, outputs) and which tasks refer to them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from ledger.events import BlobRef, blob_ref


def put_blob(tx: sqlite3.Connection, task_id: str, data: bytes) -> BlobRef:
    """Store ``data`` once by its sha256 and note that ``task_id`` refers to it."""
    ref = blob_ref(data)
    tx.execute(
        "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
        (ref.sha256, ref.size, data),
    )
    tx.execute(
        "INSERT OR IGNORE INTO blob_refs (task_id, sha256) VALUES (?, ?)", (task_id, ref.sha256)
    )
    return ref


def get_blob(conn: sqlite3.Connection, ref: BlobRef) -> bytes | None:
    """The blob's bytes (None once purged)."""
    row = conn.execute("SELECT data FROM blobs WHERE sha256 = ?", (ref.sha256,)).fetchone()
    return bytes(row[0]) if row else None


def purge_blobs(tx: sqlite3.Connection, task_id: str) -> int:
    """Drop the task's references and every blob no other task refers to. Events stay."""
    shas = [r[0] for r in tx.execute("SELECT sha256 FROM blob_refs WHERE task_id = ?", (task_id,))]
    tx.execute("DELETE FROM blob_refs WHERE task_id = ?", (task_id,))
    purged = 0
    for sha in shas:
        purged += tx.execute(
            "DELETE FROM blobs WHERE sha256 = ? AND NOT EXISTS"
            " (SELECT 1 FROM blob_refs WHERE sha256 = ?)",
            (sha, sha),
        ).rowcount
    return purged


def iter_blobs(conn: sqlite3.Connection) -> Iterator[tuple[str, bytes, list[str]]]:
    """Every stored blob: its address, its bytes and the tasks that refer to it."""
    for sha, data in conn.execute("SELECT sha256, data FROM blobs ORDER BY sha256"):
        owners = [
            r[0] for r in conn.execute("SELECT task_id FROM blob_refs WHERE sha256 = ?", (sha,))
        ]
        yield sha, bytes(data), owners
