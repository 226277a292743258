"""What every backend's ``tasks`` table holds besides a task's state: the query columns, and
how they follow from the state (so each backend writes and checks them the same way)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from ledger import codec
from ledger.decider import visible_until
from ledger.events import PROCESSING
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
