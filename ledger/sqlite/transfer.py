"""Export, import and backup of a whole SQLite ledger.

An export is a stream of records: a header, every event row as stored (hash included), every
blob and blob reference, then a footer with the event count and the last hash, so an import can
tell a whole export from one cut short. Import checks the hash chain and every blob's sha256 as
it goes and refuses the first fault; the caller's transaction then writes nothing."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.chain import GENESIS, chain_hash
from ledger.errors import ImportRefused
from ledger.events import blob_ref
from ledger.sqlite.connection import connect, create_private

if TYPE_CHECKING:
    from ledger.sqlite.log import SqliteLog

EXPORT_FORMAT = "taskledger-export"


def export_records(log: SqliteLog) -> Iterator[dict[str, object]]:
    """The whole log as records: a header, every event row as stored (hash included), then
    every blob and blob reference. ``import_records`` takes them back."""
    with log.read_snapshot() as conn:
        yield from _export_records(log, conn)


def _export_records(log: SqliteLog, conn: sqlite3.Connection) -> Iterator[dict[str, object]]:
    yield {"kind": "header", "format": EXPORT_FORMAT, "version": 1}
    events, last_hash = 0, GENESIS
    for row in log.iter_stored(tx=conn):
        events, last_hash = events + 1, row.hash
        yield {"kind": "event", **row.chained(), "hash": row.hash}
    for sha, size, data in conn.execute("SELECT sha256, size, data FROM blobs ORDER BY sha256"):
        yield {
            "kind": "blob",
            "sha256": sha,
            "size": size,
            "data": base64.b64encode(bytes(data)).decode(),
        }
    for task_id, sha in conn.execute(
        "SELECT task_id, sha256 FROM blob_refs ORDER BY task_id, sha256"
    ):
        yield {"kind": "blob_ref", "task_id": task_id, "sha256": sha}
    # The footer lets an import tell a whole export from one cut short.
    yield {"kind": "footer", "events": events, "last_hash": last_hash}


def import_records(
    log: SqliteLog,
    records: Iterable[dict[str, object]],
    *,
    tx: sqlite3.Connection,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Load exported records into this (empty) log inside ``tx``, checking the hash chain
    and every blob's sha256 as it goes. ImportRefused on the first fault: the caller's
    transaction then rolls back and nothing is written."""
    if tx.execute("SELECT 1 FROM events LIMIT 1").fetchone():
        raise ImportRefused("The target database already holds events; import into a new one")
    previous, last_position, count, footer = GENESIS, 0, 0, None
    for number, record in enumerate(records, start=1):
        kind = record.get("kind")
        if footer is not None:
            raise ImportRefused(f"Line {number}: records after the footer")
        if number == 1:
            if kind != "header" or record.get("format") != EXPORT_FORMAT:
                raise ImportRefused("Not a taskledger export (no header line)")
            continue
        if kind == "event":
            row = {k: v for k, v in record.items() if k != "kind"}
            stored = row.pop("hash", None)
            position = row.get("position")
            if not isinstance(position, int) or position <= last_position:
                raise ImportRefused(f"Line {number}: positions must strictly increase")
            try:
                expected = chain_hash(previous, **row)  # type: ignore[arg-type]
            except TypeError:
                raise ImportRefused(f"Line {number}: not an event record") from None
            if stored != expected:
                raise ImportRefused(
                    f"Hash chain broken at position {position}: the export was altered"
                )
            log.insert_row(tx, {**row, "hash": stored})
            previous, last_position, count = stored, position, count + 1
            if progress:
                progress(1)
        elif kind == "blob":
            data = base64.b64decode(str(record["data"]))
            ref = blob_ref(data)
            if ref.sha256 != record.get("sha256"):
                raise ImportRefused(f"Line {number}: blob content does not match its sha256")
            tx.execute(
                "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
                (ref.sha256, ref.size, data),
            )
        elif kind == "blob_ref":
            tx.execute(
                "INSERT OR IGNORE INTO blob_refs (task_id, sha256) VALUES (?, ?)",
                (record["task_id"], record["sha256"]),
            )
        elif kind == "footer":
            footer = record
        else:
            raise ImportRefused(f"Line {number}: unknown record kind {kind!r}")
    if footer is None:
        raise ImportRefused("The export has no footer: it was cut short")
    if footer.get("events") != count or footer.get("last_hash") != previous:
        raise ImportRefused(
            f"The export's footer says {footer.get('events')} events ending in hash "
            f"{footer.get('last_hash')}, but it holds {count} ending in {previous}"
        )
    return count


def backup(log: SqliteLog, destination: str | Path) -> None:
    """An online, consistent copy of the whole database (SQLite's backup API): writers keep
    going while it runs, and the copy is the database as of one moment."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists")
    create_private(destination)
    target = sqlite3.connect(str(destination))
    try:
        source = connect(log.path, busy_timeout_ms=log.busy_timeout_ms)
        try:
            source.backup(target)
        finally:
            source.close()
    finally:
        target.close()
