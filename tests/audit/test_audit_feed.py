"""The global event feed and its live Server-Sent Events stream, read while four writers append
concurrently (each creates and cancels 50 tasks over HTTP; alice owns two writers, bob two).

    GET /api/v1/events?after=N&limit=M   -> {"events": [...], "next_after": N'}
    GET /api/v1/events/stream?after=N    -> text/event-stream, honouring Last-Event-ID

Whatever the interleaving, a reader that pages with next_after, or resumes the stream with the
last id it saw, gets every position exactly once, in order. Every test runs against a server of
one process and one of two (``serve --workers 2``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from audit_support import Burst, Server, feed_all, query

WRITERS = 4
TASKS_PER_WRITER = 50
DEADLINE = 60


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-processes"])
def server(request, tmp_path_factory):
    """The module's server, run once as one process and once as two (``serve --workers 2``:
    two group-commit writers on one file, and a resumed stream may land on the other one).
    Real ``taskledger serve`` processes: the live stream is read while it is written (the
    in-process test client hands a response over only once it has ended)."""
    db = tmp_path_factory.mktemp("feed") / "ledger.db"
    flags = ("--workers", str(request.param)) if request.param > 1 else ()
    started = Server(db, *flags).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def writer_keys(user_keys) -> list[str]:
    """Writers 0 and 2 are alice, 1 and 3 are bob."""
    return [user_keys["alice"], user_keys["bob"], user_keys["alice"], user_keys["bob"]]


def last_position(db) -> int:
    return query(db, "SELECT coalesce(max(position), 0) FROM events")[0][0]


def page_until(
    client: httpx.Client, stop: Any, *, limit: int, pages: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Page through GET /events with next_after until ``stop.done(page_events, finished)`` says
    so; ``finished`` (the writers were done) is read before the page is fetched."""
    events: list[dict[str, Any]] = []
    after = 0
    deadline = time.monotonic() + DEADLINE
    while True:
        finished = stop.finished()
        response = client.get("/events", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        if pages is not None:
            pages.append({"after": after, **page})
        found = page["events"]
        assert len(found) <= limit
        assert page["next_after"] == (found[-1]["position"] if found else after)
        events += found
        after = page["next_after"]
        if stop.done(found, finished):
            return events
        if not found:
            time.sleep(0.02)
        assert time.monotonic() < deadline, f"feed paging did not finish; last after={after}"


class UntilMarker:
    """Stop once the burst's end marker has been read."""

    def __init__(self, burst: Burst) -> None:
        self.burst = burst
        self.seen = False

    def finished(self) -> bool:
        return self.burst.done.is_set()

    def done(self, found: list[dict[str, Any]], finished: bool) -> bool:
        self.seen = self.seen or any(self.burst.is_marker(e) for e in found)
        return self.seen


class UntilDrained:
    """Stop at the first empty page fetched after the writers had all finished."""

    def __init__(self, burst: Burst) -> None:
        self.burst = burst

    def finished(self) -> bool:
        return self.burst.done.is_set()

    def done(self, found: list[dict[str, Any]], finished: bool) -> bool:
        return finished and not found


def test_paging_the_feed_during_writes_gives_every_position_once_in_order(
    burst, writer_keys, user_keys, clients, server
):
    writes = burst(writer_keys, user_keys["admin"], tasks_per_writer=TASKS_PER_WRITER)
    pages: list[dict[str, Any]] = []
    events = page_until(clients["admin"], UntilMarker(writes), limit=37, pages=pages)
    writes.wait()

    positions = [e["position"] for e in events]
    last = last_position(server.db)
    assert events[-1]["task_id"] == writes.marker_task, "the marker is the newest event"
    assert positions == list(range(1, last + 1)), "no gap, no duplicate, no reordering"
    assert len([p for p in pages if p["events"]]) > 1, "the feed was read in several pages"
    ours = writes.tasks_of(*range(WRITERS))
    assert len(ours) == WRITERS * TASKS_PER_WRITER
    burst_events = [e for e in events if e["task_id"] in ours]
    assert len(burst_events) == 2 * len(ours)
    for task_id in ours:
        assert [(e["type"], e["version"]) for e in burst_events if e["task_id"] == task_id] == [
            ("task_created", 1),
            ("cancelled", 2),
        ]


def test_a_users_feed_holds_exactly_their_own_tasks_events(
    burst, writer_keys, user_keys, clients, server
):
    writes = burst(writer_keys, user_keys["admin"], tasks_per_writer=TASKS_PER_WRITER)
    events = page_until(clients["alice"], UntilDrained(writes), limit=23)
    writes.wait()

    alices = {row[0] for row in query(server.db, "SELECT task_id FROM tasks WHERE owner = 'alice'")}
    assert writes.tasks_of(0, 2) <= alices
    assert not writes.tasks_of(1, 3) & alices
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions)), "strictly increasing, no duplicates"
    assert {e["task_id"] for e in events} <= alices, "only alice's tasks"
    # ... and all of them: compare with the admin's feed filtered to alice's tasks.
    everything = feed_all(clients["admin"])
    assert events == [e for e in everything if e["task_id"] in alices]
    assert writes.tasks_of(0, 2) <= {e["task_id"] for e in events}

    bobs = feed_all(clients["bob"])
    assert bobs and not {e["task_id"] for e in bobs} & alices
    assert writes.tasks_of(1, 3) <= {e["task_id"] for e in bobs}


def test_the_feed_filters_by_type_and_task(burst, writer_keys, user_keys, clients):
    writes = burst(writer_keys[:1], user_keys["admin"], tasks_per_writer=5)
    writes.wait()
    admin = clients["admin"]
    cancelled = feed_all(admin, type="cancelled")
    assert cancelled and {e["type"] for e in cancelled} == {"cancelled"}
    assert writes.tasks_of(0) <= {e["task_id"] for e in cancelled}
    one = sorted(writes.tasks_of(0))[0]
    assert [e["type"] for e in feed_all(admin, task_id=one)] == ["task_created", "cancelled"]
    assert admin.get("/events", params={"type": "no_such_event"}).status_code == 400
    assert clients["worker"].get("/events").status_code == 403
    assert clients["worker"].get("/events/stream").status_code == 403
    assert admin.get("/events/stream", headers={"Last-Event-ID": "x1"}).status_code == 400


# -- Server-Sent Events -------------------------------------------------------------------------


def read_stream(
    server, key: str, *, until: Any, last_event_id: int | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Read GET /events/stream until ``until(events)`` is true, then disconnect. Returns
    (id, data) for every complete event (id, event, data, blank line) received."""
    headers = {"Authorization": key}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    received: list[tuple[int, dict[str, Any]]] = []
    current: dict[str, str] = {}
    timeout = httpx.Timeout(10, read=20)
    url = f"{server.api}/events/stream"
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue  # keep-alive comment
            if line:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
                continue
            if not current:
                continue
            assert set(current) >= {"id", "event", "data"}, current
            data = json.loads(current["data"])
            assert int(current["id"]) == data["position"]
            assert current["event"] == data["type"]
            received.append((int(current["id"]), data))
            current = {}
            if until(received):
                break
    return received


def test_the_stream_resumed_with_last_event_id_misses_nothing_and_repeats_nothing(
    burst, writer_keys, user_keys, server
):
    admin_key = user_keys["admin"]
    before = last_position(server.db)
    # The writers stop before their last task until the first connection is gone, so events
    # are appended both before and after the disconnect.
    gate = threading.Event()
    writes = burst(writer_keys, admin_key, tasks_per_writer=TASKS_PER_WRITER, gate=gate)

    first = read_stream(server, admin_key, until=lambda got: got[-1][0] >= before + 40)
    assert not writes.done.is_set(), "the writers are held before their last task"
    gate.set()
    last_seen = first[-1][0]

    second = read_stream(
        server,
        admin_key,
        last_event_id=last_seen,
        until=lambda got: any(writes.is_marker(data) for _, data in got),
    )
    writes.wait()

    ids = [i for i, _ in first] + [i for i, _ in second]
    last = last_position(server.db)
    assert second[-1][1]["task_id"] == writes.marker_task
    assert second[0][0] == last_seen + 1, "the stream resumed right after the last id seen"
    assert ids == list(range(1, last + 1)), "every position exactly once, in order"


def test_a_users_stream_holds_only_their_own_tasks(burst, writer_keys, user_keys, server, clients):
    writes = burst(writer_keys, user_keys["admin"], tasks_per_writer=10)
    writes.wait()
    expected = [e["position"] for e in feed_all(clients["bob"])]
    received = read_stream(server, user_keys["bob"], until=lambda got: got[-1][0] >= expected[-1])
    assert [i for i, _ in received] == expected
    bobs = writes.tasks_of(1, 3)
    assert bobs <= {data["task_id"] for _, data in received}
    assert not writes.tasks_of(0, 2) & {data["task_id"] for _, data in received}
