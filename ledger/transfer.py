"""Export and import of a whole ledger, whatever the backend: the record format and its checks.

An export is a stream of records: a header, every event row as stored (hash included), every
blob and blob reference, every API key (its hash, never the key), the webhooks' records that are
not in the log (each subscription's signing secrets, ``default:<owner>`` ones included; every
delivery, pending or finished, with its attempts; each subscription's run of failed
deliveries), then a footer with the event count and the last hash, so an import can tell a whole
export from one cut short. Import checks the hash chain and every blob's sha256 as it goes, and
each record's fields, and refuses the first fault; the caller's transaction then writes
nothing. A backend supplies what it stores (``Source``) and how it writes (``Sink``); an export
of one backend imports into any other.

An export holds the webhooks' signing secrets in the clear (they must be, to sign): keep it as
private as the database (``taskledger export --output`` creates its file 0600). A delivery's
lease is not exported: an imported delivery is not leased, and one pending is sent from the new
database when due (one that was in flight at the export may reach its receiver twice, under the
same ``webhook-id``).

Format versions 1 (before keys were exported) and 2 (before the webhooks' records were) are
still read: they have no key records, or no webhook records.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from ledger.chain import GENESIS, chain_hash
from ledger.errors import ImportRefused
from ledger.events import blob_ref
from ledger.log import (
    DELIVERED,
    GAVE_UP,
    PENDING,
    Delivery,
    DeliveryAttempt,
    KeyRecord,
    StoredEvent,
    WebhookSecrets,
)
from ledger.rows import stored_text, timestamp

EXPORT_FORMAT = "taskledger-export"
EXPORT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: What a delivery's ``status`` may be.
DELIVERY_STATUSES = (PENDING, DELIVERED, GAVE_UP)


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

    def webhook_secrets(self) -> Iterator[tuple[str, WebhookSecrets]]:
        """``(webhook_id, secrets)`` of every subscription's signing secrets (the owners'
        ``default:<owner>`` ones too), by webhook id."""
        ...

    def deliveries(self) -> Iterator[Delivery]:
        """Every delivery, pending or finished (its lease left out), by delivery id."""
        ...

    def delivery_attempts(self) -> Iterator[tuple[str, DeliveryAttempt]]:
        """``(delivery_id, attempt)`` of every attempt, by delivery id and attempt number."""
        ...

    def webhook_health(self) -> Iterator[tuple[str, int]]:
        """``(webhook_id, consecutive_failures)`` of every subscription with a run of failed
        deliveries, by webhook id."""
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

    def insert_webhook_secrets(self, tx: Any, webhook_id: str, secrets: WebhookSecrets) -> None:
        """Store a subscription's secrets; ImportRefused if it has some already."""
        ...

    def insert_delivery(self, tx: Any, delivery: Delivery) -> None:
        """Store the delivery, not leased; ImportRefused if its id is taken."""
        ...

    def insert_delivery_attempt(self, tx: Any, delivery_id: str, attempt: DeliveryAttempt) -> None:
        """Store the attempt; ImportRefused if the delivery has one of that number already."""
        ...

    def insert_webhook_health(self, tx: Any, webhook_id: str, consecutive_failures: int) -> None:
        """Store a subscription's run of failed deliveries; ImportRefused if it has one."""
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
    for webhook_id, secrets in source.webhook_secrets():
        yield {
            "kind": "webhook_secret",
            "webhook_id": webhook_id,
            "secret": secrets.secret,
            "previous": secrets.previous,
            "previous_until": timestamp(secrets.previous_until),
        }
    for d in source.deliveries():
        yield {
            "kind": "delivery",
            "delivery_id": d.delivery_id,
            "webhook_id": d.webhook_id,
            "owner": d.owner,
            "task_id": d.task_id,
            "version": d.version,
            "position": d.position,
            "event_type": d.event_type,
            "url": d.url,
            "created_at": timestamp(d.created_at),
            "status": d.status,
            "attempts": d.attempts,
            "next_attempt_at": timestamp(d.next_attempt_at),
            "last_status": d.last_status,
            "last_error": d.last_error,
            "finished_at": timestamp(d.finished_at),
        }
    for delivery_id, attempt in source.delivery_attempts():
        yield {
            "kind": "delivery_attempt",
            "delivery_id": delivery_id,
            "attempt": attempt.attempt,
            "at": timestamp(attempt.at),
            "duration_ms": attempt.duration_ms,
            "status_code": attempt.status_code,
            "error": attempt.error,
            "response": attempt.response,
        }
    for webhook_id, failures in source.webhook_health():
        yield {
            "kind": "webhook_health",
            "webhook_id": webhook_id,
            "consecutive_failures": failures,
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


def _string(record: dict[str, object], field: str, number: int) -> str | None:
    """An optional text that may be empty (a receiver's error or answer)."""
    value = record.get(field)
    if value is not None and not isinstance(value, str):
        raise ImportRefused(f"Line {number}: a {record.get('kind')} record's {field!r} is not text")
    return value


def _integer(
    record: dict[str, object],
    field: str,
    number: int,
    *,
    minimum: int = 0,
    optional: bool = False,
) -> Any:
    value = record.get(field)
    if value is None:
        if optional:
            return None
        raise ImportRefused(f"Line {number}: a {record.get('kind')} record needs {field!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ImportRefused(
            f"Line {number}: a {record.get('kind')} record's {field!r} must be a whole number"
            f" of at least {minimum}, not {value!r}"
        )
    return value


def _time(
    record: dict[str, object], field: str, number: int, *, optional: bool = False
) -> datetime | None:
    text = _text(record, field, number, optional=optional)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.utcoffset() is None:
        raise ImportRefused(
            f"Line {number}: a {record.get('kind')} record's {field!r} is not a time with its"
            f" offset (as 2026-01-01T12:00:00.000000Z): {text!r}"
        )
    return value.astimezone(UTC)


def _required_time(record: dict[str, object], field: str, number: int) -> datetime:
    value = _time(record, field, number)
    assert value is not None
    return value


def _secrets(record: dict[str, object], number: int) -> tuple[str, WebhookSecrets]:
    webhook_id = _text(record, "webhook_id", number)
    secrets = WebhookSecrets(
        secret=_text(record, "secret", number),
        previous=_text(record, "previous", number, optional=True),
        previous_until=_time(record, "previous_until", number, optional=True),
    )
    return webhook_id, secrets


def _delivery(record: dict[str, object], number: int) -> Delivery:
    # Each field checked in the order an export writes them, so the first fault is named.
    delivery = Delivery(
        delivery_id=_text(record, "delivery_id", number),
        webhook_id=_text(record, "webhook_id", number),
        owner=_text(record, "owner", number),
        task_id=_text(record, "task_id", number),
        version=_integer(record, "version", number, minimum=1),
        position=_integer(record, "position", number, minimum=1),
        event_type=_text(record, "event_type", number),
        url=_text(record, "url", number),
        created_at=_required_time(record, "created_at", number),
        status=_text(record, "status", number),
        attempts=_integer(record, "attempts", number),
        next_attempt_at=_time(record, "next_attempt_at", number, optional=True),
        last_status=_integer(record, "last_status", number, optional=True),
        last_error=stored_text(_string(record, "last_error", number)),
        finished_at=_time(record, "finished_at", number, optional=True),
    )
    if delivery.status not in DELIVERY_STATUSES:
        raise ImportRefused(
            f"Line {number}: a delivery record's 'status' must be one of"
            f" {', '.join(DELIVERY_STATUSES)}, not {delivery.status!r}"
        )
    if delivery.status == PENDING and delivery.next_attempt_at is None:
        raise ImportRefused(f"Line {number}: a pending delivery record needs 'next_attempt_at'")
    return delivery


def _attempt(record: dict[str, object], number: int) -> tuple[str, DeliveryAttempt]:
    delivery_id = _text(record, "delivery_id", number)
    attempt = _integer(record, "attempt", number, minimum=1)
    at = _required_time(record, "at", number)
    duration = record.get("duration_ms")
    if duration is None:
        raise ImportRefused(f"Line {number}: a delivery_attempt record needs 'duration_ms'")
    if not isinstance(duration, int | float) or isinstance(duration, bool) or duration < 0:
        raise ImportRefused(
            f"Line {number}: a delivery_attempt record's 'duration_ms' must be a number of"
            f" at least 0, not {duration!r}"
        )
    return delivery_id, DeliveryAttempt(
        attempt=attempt,
        at=at,
        duration_ms=float(duration),
        status_code=_integer(record, "status_code", number, optional=True),
        error=_string(record, "error", number),
        response=_string(record, "response", number),
    )


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
        elif kind == "webhook_secret":
            sink.insert_webhook_secrets(tx, *_secrets(record, number))
        elif kind == "delivery":
            sink.insert_delivery(tx, _delivery(record, number))
        elif kind == "delivery_attempt":
            sink.insert_delivery_attempt(tx, *_attempt(record, number))
        elif kind == "webhook_health":
            webhook_id = _text(record, "webhook_id", number)
            failures = _integer(record, "consecutive_failures", number, minimum=1)
            sink.insert_webhook_health(tx, webhook_id, failures)
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
