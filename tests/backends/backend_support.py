"""Shared vocabulary for the backend contract suite: fixed times, envelopes, event builders,
and helpers that read a backend through the storage port only (``ledger.log``'s protocols).

Nothing here knows which backend it talks to: no SQL, no driver, no private attribute. Kept
out of ``conftest.py`` (pytest swaps ``sys.modules["conftest"]`` between directories) and named
so it cannot clash with another test directory's helper module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ledger import codec
from ledger.chain import GENESIS, chain_hash
from ledger.decider import fold
from ledger.events import (
    AnyEvent,
    BlobRef,
    Cancelled,
    Claimed,
    Deleted,
    Expired,
    Failed,
    LeaseExtended,
    Succeeded,
    TaskCreated,
    UpdateRequested,
    blob_ref,
    tag_of,
)
from ledger.log import (
    Actor,
    Backend,
    Envelope,
    FeedEntry,
    RecordedEvent,
    StoredEvent,
    stream_id_for,
)
from ledger.state import TaskState
from tests.ledger.stories import (  # the ledger tests' vocabulary: one set of times and blobs
    FILE,
    FILE_BYTES,
    OUTPUT,
    OUTPUT_BYTES,
    OWNER,
    T0,
    WORKER,
    at,
)

__all__ = ["FILE", "FILE_BYTES", "OUTPUT", "OUTPUT_BYTES", "OWNER", "T0", "WORKER", "at"]


def env(
    t: float = 0,
    *,
    key_id: str | None = "k1",
    role: str = "user",
    request_id: str | None = "req-1",
    idempotency_key: str | None = None,
) -> Envelope:
    return Envelope(
        recorded_at=at(t),
        actor=Actor(key_id=key_id, role=role),
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


# -- events -------------------------------------------------------------------------------------


def created(
    task_id: str,
    t: float = 0,
    *,
    owner: str = OWNER,
    expires_in: int | None = 3600,
    file: BlobRef = FILE,
) -> TaskCreated:
    return TaskCreated(
        task_id=task_id,
        at=at(t),
        owner=owner,
        configuration={"ocr_strategy": "All"},
        file=file,
        file_name="doc.pdf",
        expires_in=expires_in,
    )


def claimed(task_id: str, t: float = 1, *, lease: float = 30, attempt: int = 1) -> Claimed:
    return Claimed(
        task_id=task_id, at=at(t), worker_id=WORKER, lease_until=at(t + lease), attempt=attempt
    )


def extended(task_id: str, t: float, *, until: float) -> LeaseExtended:
    return LeaseExtended(task_id=task_id, at=at(t), worker_id=WORKER, lease_until=at(until))


def succeeded(task_id: str, t: float = 2, *, output: BlobRef = OUTPUT) -> Succeeded:
    return Succeeded(task_id=task_id, at=at(t), worker_id=WORKER, output=output)


def failed(task_id: str, t: float = 2) -> Failed:
    return Failed(task_id=task_id, at=at(t), worker_id=WORKER, error="boom")


def update_requested(task_id: str, t: float = 3) -> UpdateRequested:
    return UpdateRequested(
        task_id=task_id, at=at(t), configuration={"ocr_strategy": "Auto"}, expires_in=3600
    )


def cancelled(task_id: str, t: float = 1) -> Cancelled:
    return Cancelled(task_id=task_id, at=at(t), reason="not needed")


def deleted(task_id: str, t: float = 4) -> Deleted:
    return Deleted(task_id=task_id, at=at(t))


def expired(task_id: str, t: float = 70) -> Expired:
    return Expired(task_id=task_id, at=at(t))


# -- writing through the port -------------------------------------------------------------------


def append(
    backend: Backend,
    task_id: str,
    events: Sequence[AnyEvent],
    *,
    expected: int = 0,
    envelope: Envelope | None = None,
    tx: Any = None,
) -> list[RecordedEvent]:
    """Append ``events`` to the task's stream, recorded at the first event's time by default."""
    envelope = envelope or env((events[0].at - T0).total_seconds())
    return backend.log.append(stream_id_for(task_id), expected, events, envelope, tx=tx)


def feed_entries(owner: str, recorded: Sequence[RecordedEvent]) -> list[FeedEntry]:
    """The owner's feed entries of ``recorded``: one per event."""
    return [
        FeedEntry(
            position=r.position,
            owner=owner,
            task_id=r.event.task_id,
            type=tag_of(type(r.event)),
        )
        for r in recorded
    ]


def write_task(
    backend: Backend,
    events: Sequence[AnyEvent],
    *,
    blobs: Iterable[bytes] = (),
    queued: bool = False,
) -> TaskState:
    """What the command handler does for a whole story, in one transaction: the blobs, the
    events (one append each, as separate commands would), the task's row (``fold`` of the
    events), queued at its last event's position if ``queued``, and its owner's feed entries
    (only the tombstone's once it is deleted or expired). Returns the state."""
    task_id = events[0].task_id
    with backend.log.transaction() as tx:
        for data in blobs:
            backend.log.put_blob(task_id, data, tx=tx)
        recorded: list[RecordedEvent] = []
        for version, event in enumerate(events):
            recorded += append(backend, task_id, [event], expected=version, tx=tx)
        state = fold(events)
        backend.views.save_task(tx, state)
        if queued:
            backend.views.enqueue(tx, task_id, recorded[-1].position)
        if state.owner is not None:
            kept = recorded[-1:] if state.gone is not None else recorded
            backend.views.add_to_feed(tx, feed_entries(state.owner, kept))
    return state


def populate(backend: Backend) -> list[RecordedEvent]:
    """A small ledger: three tasks of two owners, interleaved, with their blobs and rows;
    one of them deleted and its blobs purged. Returns every recorded event in append order."""
    recorded: list[RecordedEvent] = []
    story = [
        ("a", created("a", 0), FILE_BYTES),
        ("b", created("b", 1, owner="bob", file=blob_ref(b"bob's file")), b"bob's file"),
        ("a", claimed("a", 2), None),
        ("c", created("c", 3, file=blob_ref(b"carol's file")), b"carol's file"),
        ("a", succeeded("a", 4), OUTPUT_BYTES),
        ("c", cancelled("c", 5), None),
        ("c", deleted("c", 6), None),
    ]
    versions: dict[str, int] = {}
    for task_id, event, data in story:
        with backend.log.transaction() as tx:
            if data is not None:
                backend.log.put_blob(task_id, data, tx=tx)
            expected = versions.get(task_id, 0)
            recorded += append(
                backend,
                task_id,
                [event],
                expected=expected,
                envelope=env((event.at - T0).total_seconds(), key_id=f"key-{task_id}"),
                tx=tx,
            )
            versions[task_id] = expected + 1
            if isinstance(event, Deleted):
                backend.log.purge_blobs(task_id, tx=tx)
    with backend.log.transaction() as tx:
        for task_id in versions:
            events = [r.event for r in recorded if r.stream_id == stream_id_for(task_id)]
            backend.views.save_task(tx, fold(events))
    return recorded


# -- reading through the port -------------------------------------------------------------------


def stored(backend: Backend, **kw: Any) -> list[StoredEvent]:
    return list(backend.log.iter_stored(**kw))


def blobs(backend: Backend, **kw: Any) -> list[tuple[str, bytes, list[str]]]:
    """Every blob with its owners, in a fixed order (the port promises no order)."""
    return sorted((sha, data, sorted(owners)) for sha, data, owners in backend.log.iter_blobs(**kw))


def positions(events: Iterable[RecordedEvent | StoredEvent]) -> list[int]:
    return [e.position for e in events]


def assert_chain(rows: Sequence[StoredEvent]) -> None:
    """Each stored row's hash links it to the one before, from GENESIS."""
    previous = GENESIS
    for row in rows:
        assert chain_hash(previous, **row.chained()) == row.hash, f"chain broken at {row.position}"
        previous = row.hash


def assert_stored_matches(row: StoredEvent, event: RecordedEvent) -> None:
    """A stored row is the recorded event as written: same envelope, the event encoded as the
    codec encodes it (the chain covers that text), the time as ``codec.timestamp`` writes it."""
    assert (row.position, row.stream_id, row.version) == (
        event.position,
        event.stream_id,
        event.version,
    )
    assert row.type == type(event.event).__struct_config__.tag
    assert row.data == codec.encode_str(event.event)
    assert codec.decode_event(row.data) == event.event
    assert row.recorded_at == codec.timestamp(event.recorded_at)
    assert (row.actor_key_id, row.actor_role) == (event.actor.key_id, event.actor.role)
    assert (row.request_id, row.idempotency_key) == (event.request_id, event.idempotency_key)
    assert row.hash == event.hash


T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` on a helper thread: its result or its exception, or a failure if it has not
    finished after ``seconds`` (a deadlock fails the test instead of hanging the suite)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a deadlock?"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
