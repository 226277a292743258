"""The hash chain over the log: each event's hash covers the previous event's hash, its envelope
and its data (and so the sha256 of every blob the data refers to). Editing, inserting or removing
a stored event breaks the chain at that point, which ``taskledger verify`` reports.

The chain has no secret: it detects edits made without recomputing every later hash (a slip, a
bad restore, a hand edit), not a forger with write access who rewrites the chain too. Keeping an
exported copy, or the last hash, elsewhere covers that case."""

from __future__ import annotations

import hashlib

import msgspec

GENESIS = "0" * 64

_encoder = msgspec.json.Encoder()


def chain_hash(
    previous: str,
    *,
    position: int,
    stream_id: str,
    version: int,
    type: str,
    data: str,
    recorded_at: str,
    actor_key_id: str | None,
    actor_role: str,
    request_id: str | None,
    idempotency_key: str | None,
) -> str:
    payload = _encoder.encode(
        [
            previous,
            position,
            stream_id,
            version,
            type,
            recorded_at,
            actor_key_id,
            actor_role,
            request_id,
            idempotency_key,
            data,
        ]
    )
    return hashlib.sha256(payload).hexdigest()
