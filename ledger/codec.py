"""msgspec encoders and decoders, built once (msgspec's performance advice)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from ledger.events import AnyEvent
from ledger.state import TaskState

encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(AnyEvent)
state_decoder = msgspec.json.Decoder(TaskState)


def encode(value: object) -> bytes:
    return encoder.encode(value)


def encode_str(value: object) -> str:
    return encoder.encode(value).decode()


def decode_event(data: bytes | str) -> AnyEvent:
    return event_decoder.decode(data)


def decode_state(data: bytes | str) -> TaskState:
    return state_decoder.decode(data)


def timestamp(value: datetime) -> str:
    """A fixed-width UTC RFC 3339 text that sorts as it compares (microseconds always written)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
