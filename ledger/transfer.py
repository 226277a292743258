"""Export and import of a whole ledger, whatever the backend: the record format and its checks.

An export is a stream of records: a header, every event row as stored (hash included), every
blob and blob reference, every API key (its hash, never the key), then a footer with the event
count and the last hash, so an import can tell a whole export from one cut short. Import checks
the hash chain and every blob's sha256 as it goes and refuses the first fault; the caller's
transaction then writes nothing. A backend supplies what it stores (``Source``) and how it
writes (``Sink``); an export of one backend imports into any other.

Format version 1 (before keys were exported) is still read: it has no key records.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from ledger.chain import GENESIS, chain_hash
from ledger.errors import ImportRefused
from ledger.events import blob_ref
from ledger.log import KeyRecord, StoredEvent

EXPORT_FORMAT = "taskledger-export"
EXPORT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class Source(Protocol):
    """What one read snapshot of a backend holds, walked in a fixed order."""

    def events(self) -> Iterator[StoredEvent]: ...

    def blobs(self) -> Iterator[tuple[str, int, bytes]]:
        """``(sha256, size, data)`` of every blob, by sha256."""
        ...

    def blob_refs(self) -> Iterator[tuple[str, str]]:
        """``(task_id, sha256)`` of every reference, in that order."""
        ...

    def keys(self) -> Iterator[tuple[KeyRecord, str]]:
        """Every API key's record and stored hash, by key id."""
        ...


class Sink(Protocol):
    """Where an import writes, inside the caller's transaction ``tx``."""

    def has_events(self, tx: Any) -> bool: ...

    def insert_event(self, tx: Any, row: dict[str, object]) -> None: ...

    def insert_blob(self, tx: Any, sha256: str, size: int, data: bytes) -> None: ...

    def insert_blob_ref(self, tx: Any, task_id: str, sha256: str) -> None: ...

    def insert_key(self, tx: Any, record: KeyRecord, key_hash: str) -> None:
        """Store the key; ImportRefused if its id is taken."""
        ...


def export_records(source: Source) -> Iterator[dict[str, object]]:
    yield {"kind": "header", "format": EXPORT_FORMAT, "version": EXPORT_VERSION}
    events, last_hash = 0, GENESIS
    for row in source.events():
        events, last_hash = events + 1, row.hash
        yield {"kind": "event", **row.chained(), "hash": row.hash}
    for sha, size, data in source.blobs():
        yield {"kind": "blob", "sha256": sha, "size": size, "data": base64.b64encode(data).decode()}
    for task_id, sha in source.blob_refs():
        yield {"kind": "blob_ref", "task_id": task_id, "sha256": sha}
    for record, key_hash in source.keys():
        yield {
            "kind": "key",
            "key_id": record.key_id,
            "owner": record.owner,
            "role": record.role,
            "created_at": record.created_at,
            "revoked_at": record.revoked_at,
            "key_hash": key_hash,
        }
    # The footer lets an import tell a whole export from one cut short.
    yield {"kind": "footer", "events": events, "last_hash": last_hash}


def _text(record: dict[str, object], field: str, number: int, *, optional: bool = False) -> Any:
    value = record.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ImportRefused(f"Line {number}: a {record.get('kind')} record needs {field!r}")
    return value


def import_records(
    sink: Sink,
    records: Iterable[dict[str, object]],
    *,
    tx: Any,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Load exported records through ``sink`` inside ``tx`` (into an empty ledger), checking the
    hash chain and every blob's sha256 as it goes. ImportRefused on the first fault: the
    caller's transaction then rolls back and nothing is written. Returns the event count."""
    if sink.has_events(tx):
        raise ImportRefused("The target database already holds events; import into a new one")
    previous, last_position, count, footer = GENESIS, 0, 0, None
    for number, record in enumerate(records, start=1):
        kind = record.get("kind")
        if footer is not None:
            raise ImportRefused(f"Line {number}: records after the footer")
        if number == 1:
            if kind != "header" or record.get("format") != EXPORT_FORMAT:
                raise ImportRefused("Not a taskledger export (no header line)")
            if record.get("version") not in READABLE_VERSIONS:
                raise ImportRefused(
                    f"The export is format version {record.get('version')}; this taskledger "
                    f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: upgrade it"
                )
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
            sink.insert_event(tx, {**row, "hash": stored})
            previous, last_position, count = stored, position, count + 1
            if progress:
                progress(1)
        elif kind == "blob":
            data = base64.b64decode(str(record["data"]))
            ref = blob_ref(data)
            if ref.sha256 != record.get("sha256"):
                raise ImportRefused(f"Line {number}: blob content does not match its sha256")
            sink.insert_blob(tx, ref.sha256, ref.size, data)
        elif kind == "blob_ref":
            sink.insert_blob_ref(
                tx, _text(record, "task_id", number), _text(record, "sha256", number)
            )
        elif kind == "key":
            key = KeyRecord(
                key_id=_text(record, "key_id", number),
                owner=_text(record, "owner", number),
                role=_text(record, "role", number),
                created_at=_text(record, "created_at", number),
                revoked_at=_text(record, "revoked_at", number, optional=True),
            )
            sink.insert_key(tx, key, _text(record, "key_hash", number))
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
