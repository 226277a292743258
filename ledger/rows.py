"""What both backends' tables hold and how it follows from the domain, so each writes and reads
it the same way: a ``tasks`` row's query columns (from its state), an ``events`` row (read
back as a recorded or stored event; made, hash chained, by ``chain_events``), and the
``webhook_secrets``, ``webhook_deliveries`` and ``webhook_attempts`` rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ledger import codec
from ledger.chain import chain_hash
from ledger.codec import LogEvent
from ledger.decider import visible_until
from ledger.events import PROCESSING, tag_of
from ledger.log import (
    PENDING,
    Actor,
    Delivery,
    DeliveryAttempt,
    Envelope,
    RecordedEvent,
    StoredEvent,
    WebhookSecrets,
)
from ledger.state import TaskState

#: The query columns of a ``tasks`` row, in the order ``query_columns`` gives their values.
COLUMN_NAMES = ("owner", "status", "created_at", "visible_until", "lease_until", "gone", "version")


def timestamp(value: datetime | None) -> str | None:
    return codec.timestamp(value) if value is not None else None


def query_columns(state: TaskState) -> tuple[object, ...]:
    """The values of COLUMN_NAMES for a row holding ``state``."""
    return (
        state.owner,
        state.status,
        timestamp(state.created_at),
        timestamp(visible_until(state)),
        timestamp(state.lease_until) if state.status == PROCESSING else None,
        state.gone,
        state.version,
    )


class _Columns(msgspec.Struct, kw_only=True):
    """The fields of a stored state the query columns come from (decoding only these skips
    the configuration, which is most of a state)."""

    task_id: str
    version: int = 0
    owner: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    lease_until: datetime | None = None
    gone: str | None = None


_columns_decoder = msgspec.json.Decoder(_Columns)


def columns_of(state_json: str) -> TaskState:
    """A state holding just what the query columns are computed from."""
    return TaskState(**msgspec.structs.asdict(_columns_decoder.decode(state_json)))


def stale_columns(row: tuple[object, ...]) -> str | None:
    """For a row ``(task_id, state, *COLUMN_NAMES)``: what its columns get wrong about its
    state, or None if they agree (or its state cannot be decoded: verify reports that)."""
    try:
        expected = query_columns(columns_of(str(row[1])))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    wrong = [
        f"{name} is {stored!r}, its state says {want!r}"
        for name, stored, want in zip(COLUMN_NAMES, row[2:], expected, strict=True)
        if stored != want
    ]
    return "; ".join(wrong) if wrong else None


# -- event rows: what both backends' ``events`` tables hold and how an append fills them ------

#: The columns ``row_to_recorded`` reads, in its order.
EVENT_COLUMNS = (
    "position, stream_id, version, data, recorded_at, actor_key_id, actor_role, "
    "request_id, idempotency_key, hash"
)
#: The columns ``row_to_stored`` reads (every column of ``events``), in its order.
STORED_COLUMNS = (
    "position, stream_id, version, type, data, recorded_at, actor_key_id, actor_role, "
    "request_id, idempotency_key, hash"
)

#: The head of the log an append goes on from: the last position handed out, the newest
#: event's hash and its recorded_at ("" before the first event).
Head = tuple[int, str, str]


def row_to_recorded(row: Sequence[Any]) -> RecordedEvent:
    position, stream_id, version, data, recorded_at, key_id, role, request_id, idem, hash_ = row
    return RecordedEvent(
        position=position,
        stream_id=stream_id,
        version=version,
        recorded_at=codec.parse_timestamp(recorded_at),
        actor=Actor(key_id=key_id, role=role),
        request_id=request_id,
        idempotency_key=idem,
        event=codec.decode_event(data),
        hash=hash_,
    )


def row_to_stored(r: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        position=r[0],
        stream_id=r[1],
        version=r[2],
        type=r[3],
        data=r[4],
        recorded_at=r[5],
        actor_key_id=r[6],
        actor_role=r[7],
        request_id=r[8],
        idempotency_key=r[9],
        hash=r[10],
    )


def chain_events(
    head: Head,
    stream_id: str,
    expected_version: int,
    events: Sequence[LogEvent],
    envelope: Envelope,
) -> tuple[list[dict[str, object]], list[RecordedEvent], Head]:
    """The rows an append of ``events`` after ``head`` inserts (hash chained), the events as
    recorded, and the head after them. recorded_at never goes backwards along the log, whatever
    the clocks of several writer processes say, so "the log as of time T" is always a prefix."""
    position, previous, last_recorded_at = head
    stamp = codec.timestamp(envelope.recorded_at)
    if stamp >= last_recorded_at:
        recorded_at, when = stamp, envelope.recorded_at.astimezone(UTC)
    else:
        recorded_at, when = last_recorded_at, codec.parse_timestamp(last_recorded_at)
    rows: list[dict[str, object]] = []
    recorded: list[RecordedEvent] = []
    for offset, event in enumerate(events, start=1):
        version = expected_version + offset
        position += 1
        stored = StoredEvent(
            position=position,
            stream_id=stream_id,
            version=version,
            type=tag_of(type(event)),
            data=codec.encode_str(event),
            recorded_at=recorded_at,
            actor_key_id=envelope.actor.key_id,
            actor_role=envelope.actor.role,
            request_id=envelope.request_id,
            idempotency_key=envelope.idempotency_key,
            hash="",
        )
        previous = chain_hash(previous, **stored.chained())
        rows.append({**stored.chained(), "hash": previous})
        recorded.append(
            RecordedEvent(
                position=position,
                stream_id=stream_id,
                version=version,
                recorded_at=when,
                actor=envelope.actor,
                request_id=envelope.request_id,
                idempotency_key=envelope.idempotency_key,
                event=event,
                hash=previous,
            )
        )
    return rows, recorded, (position, previous, recorded_at)


# -- webhook deliveries -----------------------------------------------------------------------

#: The columns of a ``webhook_deliveries`` row that make a ``Delivery`` (the lease's two are
#: the store's own), in the order ``delivery_params`` gives them and ``row_to_delivery`` reads.
#: A pending delivery (aliased ``d``) that no earlier pending delivery of the same subscription
#: and task holds back: each task's events reach a receiver in order. Both backends' lease and
#: ``next_due`` queries use it; the status is written out, so the planner can match the partial
#: index on pending deliveries.
FIRST_IN_LINE = (
    "NOT EXISTS (SELECT 1 FROM webhook_deliveries AS e"
    " WHERE e.webhook_id = d.webhook_id AND e.task_id = d.task_id"
    f" AND e.status = '{PENDING}' AND e.position < d.position)"
)

DELIVERY_COLUMNS = (
    "delivery_id, webhook_id, owner, task_id, version, position, event_type, url, created_at,"
    " status, attempts, next_attempt_at, last_status, last_error, finished_at"
)


def parse_timestamp(value: str | None) -> datetime | None:
    return codec.parse_timestamp(value) if value is not None else None


def stored_text(value: str | None) -> str | None:
    """A receiver's words (an error, an answer) as both backends store them: NUL, which
    PostgreSQL's text cannot hold, as U+FFFD."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def row_to_delivery(row: Sequence[object]) -> Delivery:
    return Delivery(
        delivery_id=row[0],  # type: ignore[arg-type]
        webhook_id=row[1],  # type: ignore[arg-type]
        owner=row[2],  # type: ignore[arg-type]
        task_id=row[3],  # type: ignore[arg-type]
        version=row[4],  # type: ignore[arg-type]
        position=row[5],  # type: ignore[arg-type]
        event_type=row[6],  # type: ignore[arg-type]
        url=row[7],  # type: ignore[arg-type]
        created_at=codec.parse_timestamp(row[8]),  # type: ignore[arg-type]
        status=row[9],  # type: ignore[arg-type]
        attempts=row[10],  # type: ignore[arg-type]
        next_attempt_at=parse_timestamp(row[11]),  # type: ignore[arg-type]
        last_status=row[12],  # type: ignore[arg-type]
        last_error=row[13],  # type: ignore[arg-type]
        finished_at=parse_timestamp(row[14]),  # type: ignore[arg-type]
    )


def delivery_params(d: Delivery) -> tuple[object, ...]:
    """The values of DELIVERY_COLUMNS for ``d``."""
    return (
        d.delivery_id,
        d.webhook_id,
        d.owner,
        d.task_id,
        d.version,
        d.position,
        d.event_type,
        d.url,
        codec.timestamp(d.created_at),
        d.status,
        d.attempts,
        timestamp(d.next_attempt_at),
        d.last_status,
        d.last_error,
        timestamp(d.finished_at),
    )


#: The columns of a ``webhook_attempts`` row that make a ``DeliveryAttempt`` (its delivery's id
#: aside), in the order ``row_to_attempt`` reads them.
ATTEMPT_COLUMNS = "attempt, at, duration_ms, status_code, error, response"


def row_to_attempt(row: Sequence[object]) -> DeliveryAttempt:
    return DeliveryAttempt(
        attempt=row[0],  # type: ignore[arg-type]
        at=codec.parse_timestamp(row[1]),  # type: ignore[arg-type]
        duration_ms=row[2],  # type: ignore[arg-type]
        status_code=row[3],  # type: ignore[arg-type]
        error=row[4],  # type: ignore[arg-type]
        response=row[5],  # type: ignore[arg-type]
    )


def attempt_params(delivery_id: str, a: DeliveryAttempt) -> tuple[object, ...]:
    """The values of ``delivery_id, ATTEMPT_COLUMNS`` for ``a``."""
    return (
        delivery_id,
        a.attempt,
        codec.timestamp(a.at),
        a.duration_ms,
        a.status_code,
        stored_text(a.error),
        stored_text(a.response),
    )


#: The columns of a ``webhook_secrets`` row that make ``WebhookSecrets`` (its subscription's id
#: aside), in the order ``row_to_secrets`` reads them.
SECRET_COLUMNS = "secret, previous, previous_until"


def row_to_secrets(row: Sequence[object]) -> WebhookSecrets:
    return WebhookSecrets(
        secret=row[0],  # type: ignore[arg-type]
        previous=row[1],  # type: ignore[arg-type]
        previous_until=parse_timestamp(row[2]),  # type: ignore[arg-type]
    )


def secrets_params(webhook_id: str, s: WebhookSecrets) -> tuple[object, ...]:
    """The values of ``webhook_id, SECRET_COLUMNS`` for ``s``."""
    return (webhook_id, s.secret, s.previous, timestamp(s.previous_until))
