"""One task's history cannot grow without bound, and reading it never costs O(history).

The long tasks are built straight through the store (``scripts.bench_history.grow``: every
command decided by the decider, appended with its own envelope, the inline projections applied),
a few seconds for all of them, then read over the API served in this process.

How much a read costs is observed, not timed: every SQLite connection the server opens gets a
progress handler that counts the virtual machine's steps (so a scan SQLite does inside one
statement counts, row by row), and every event row turned into an event is counted. Reading the
whole 100,000-event history is the yardstick."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from reliability_support import add_key

import ledger.sqlite.log as sqlite_log
from api.composition import Store
from ledger.decider import fold
from ledger.log import stream_id_for
from ledger.rows import EVENT_COLUMNS
from ledger.state import TaskState
from projections.checkpoints import CHECKPOINT_EVERY
from scripts.bench_history import T0, grow
from tests.inprocess import InProcessServer
from tests.support import chunkr_output

LONG = "0190a1b2-c3d4-7e5f-8a9b-000000100000"  # 100,000 events
PAGED = "0190a1b2-c3d4-7e5f-8a9b-000000002500"  # 2,500 events
SHORT = "0190a1b2-c3d4-7e5f-8a9b-000000000003"  # 3 events
AT_LIMIT = "0190a1b2-c3d4-7e5f-8a9b-000000010000"  # 10,000 events: the default limit
BELOW_LIMIT = "0190a1b2-c3d4-7e5f-8a9b-000000009999"  # 9,999 events
SIZES = {LONG: 100_000, PAGED: 2_500, SHORT: 3, AT_LIMIT: 10_000, BELOW_LIMIT: 9_999}
#: The VM steps between two calls of the progress handler.
STEPS = 10
LIMIT_MESSAGE = "This task has reached its limit of 10000 events; create a new task"
#: The versions of the long task read as they were, by version and by time.
VERSIONS = [2, 999, 1000, 1001, 50_000, 50_999, 99_999, 100_000]
MOMENTS = [1, 50_000, 77_777, 100_000]
ASKED = {*VERSIONS, *MOMENTS}


@dataclass
class Ledger:
    db: Path
    alice: str
    bob: str
    worker: str


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Ledger:
    db = tmp_path_factory.mktemp("long-history") / "ledger.db"
    store = Store(db, synchronous="OFF")
    try:
        # One after another in time: recorded_at never goes backwards along the log.
        for hours, (task_id, size) in enumerate(SIZES.items()):
            grow(store, task_id, size, owner="alice", start=T0 + timedelta(hours=hours))
    finally:
        store.close()
    return Ledger(db, add_key(db, "alice"), add_key(db, "bob"), add_key(db, "pool", "worker"))


@pytest.fixture
def server(ledger) -> Iterator[InProcessServer]:
    server = InProcessServer(ledger.db, sweep_interval=0).start()
    yield server
    server.stop()


def version(ledger: Ledger, task_id: str) -> int:
    store = Store(ledger.db)
    try:
        return store.version(task_id)
    finally:
        store.close()


# -- paging ---------------------------------------------------------------------------------------


def test_a_long_history_comes_in_pages_in_order(ledger, server):
    alice = server.client(ledger.alice)
    seen: list[dict[str, Any]] = []
    after, pages = 0, []
    while True:
        response = alice.get(f"/task/{PAGED}/events", params={"after": after})
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page
        pages.append(len(page))
        if "X-Next-After" not in response.headers:
            assert "Link" not in response.headers
            break
        after = int(response.headers["X-Next-After"])
        assert after == page[-1]["version"]
        assert response.headers["Link"] == (
            f'</api/v1/task/{PAGED}/events?after={after}&limit=1000>; rel="next"'
        )
    assert pages == [1000, 1000, 500]
    assert [e["version"] for e in seen] == list(range(1, 2501))
    positions = [e["position"] for e in seen]
    assert positions == sorted(positions)
    assert [e["type"] for e in seen[:5]] == [
        "task_created",
        "claimed",
        "succeeded",
        "update_requested",
        "claimed",
    ]

    # A page of any size from any version; past the end, an empty page and no next.
    response = alice.get(f"/task/{PAGED}/events", params={"after": 1234, "limit": 3})
    assert [e["version"] for e in response.json()] == [1235, 1236, 1237]
    assert response.headers["X-Next-After"] == "1237"
    response = alice.get(f"/task/{PAGED}/events", params={"after": 2498, "limit": 2})
    assert [e["version"] for e in response.json()] == [2499, 2500]
    assert "X-Next-After" not in response.headers  # exactly the rest: no empty page to fetch
    response = alice.get(f"/task/{PAGED}/events", params={"after": 2500})
    assert (response.status_code, response.json()) == (200, [])
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": -1}):
        response = alice.get(f"/task/{PAGED}/events", params=bad)
        assert response.status_code == 400, bad
        assert response.text.startswith("Invalid request: "), response.text
    # Another user's task is not found, page or no page.
    response = server.client(ledger.bob).get(f"/task/{PAGED}/events", params={"after": 5})
    assert (response.status_code, response.text) == (404, "Task not found")


# -- time travel: a bounded read ------------------------------------------------------------------


class Reads:
    """What the server's reads cost: SQLite VM steps (in units of STEPS, over every connection
    the server opens) and event rows turned into events."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ticks = 0
        self.events = 0
        connect, to_event = sqlite_log.connect, sqlite_log.row_to_recorded

        def counting_connect(*args: Any, **kwargs: Any) -> Any:
            conn = connect(*args, **kwargs)
            conn.set_progress_handler(self._tick, STEPS)
            return conn

        def counting_event(row: tuple) -> Any:
            self.events += 1
            return to_event(row)

        monkeypatch.setattr(sqlite_log, "connect", counting_connect)
        monkeypatch.setattr(sqlite_log, "row_to_recorded", counting_event)

    def _tick(self) -> int:
        self.ticks += 1
        return 0

    def of(self, request: Any) -> tuple[int, int, Any]:
        """(ticks, events, the answer) of one request (or any call)."""
        ticks, events = self.ticks, self.events
        answer = request()
        return self.ticks - ticks, self.events - events, answer


@pytest.fixture(scope="module")
def whole(ledger) -> int:
    """The yardstick: the ticks of reading the 100,000-event history whole."""
    store = Store(ledger.db)
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    try:
        conn = store.log.reader()
        conn.set_progress_handler(tick, STEPS)
        # The query read_stream runs, its rows walked and dropped (the events are not kept:
        # this process's memory stays small for the tests that run after this one).
        rows = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? ORDER BY version",
            (stream_id_for(LONG),),
        )
        assert sum(1 for _ in rows) == 100_000
        conn.set_progress_handler(None, STEPS)
    finally:
        store.close()
    return ticks[0]


@pytest.fixture(scope="module")
def folded(ledger) -> dict[int, TaskState]:
    """The long task's state after each version the tests ask about: the fold of its whole
    stream, taken once."""
    store = Store(ledger.db)
    states: dict[int, TaskState] = {}
    state = None
    try:
        for version in range(0, 100_000, 1000):  # a page at a time: memory stays small
            for event in store.history(LONG, after=version, limit=1000):
                state = fold([event.event], state)
                if event.version in ASKED:
                    states[event.version] = state
    finally:
        store.close()
    return states


@pytest.fixture
def reads(monkeypatch, ledger) -> Iterator[tuple[Reads, Any]]:
    """The counters, and a client of alice's on a server opened with them."""
    counter = Reads(monkeypatch)
    server = InProcessServer(ledger.db, sweep_interval=0).start()
    try:
        alice = server.client(ledger.alice)
        alice.get(f"/task/{SHORT}")  # the key is looked up and cached, the readers opened
        yield counter, alice
    finally:
        server.stop()


def as_of(client: Any, task_id: str, **params: Any) -> Any:
    def get() -> Any:
        response = client.get(f"/task/{task_id}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    return get


def test_as_of_version_1_of_a_100000_event_task_reads_one_event(reads, whole):
    counter, alice = reads
    short_ticks, short_events, first_short = counter.of(as_of(alice, SHORT, as_of_version=1))
    ticks, events, first = counter.of(as_of(alice, LONG, as_of_version=1))
    assert (events, short_events) == (1, 1)
    # As cheap as on a 3-event task, whatever the history behind it.
    assert ticks <= 2 * short_ticks + 20, (ticks, short_ticks, whole)
    assert ticks * 1000 < whole, (ticks, whole)
    assert (first["status"], first["message"]) == ("Starting", "Task queued")
    assert (
        first["configuration"]["chunk_processing"]
        == (first_short["configuration"]["chunk_processing"])
    )


@pytest.mark.parametrize("number", VERSIONS, ids=lambda n: f"v{n}")
def test_any_as_of_version_reads_fewer_events_than_the_checkpoint_interval(
    reads, whole, folded, number
):
    counter, alice = reads
    ticks, events, answer = counter.of(as_of(alice, LONG, as_of_version=number))
    assert events < CHECKPOINT_EVERY
    assert events == number % CHECKPOINT_EVERY  # from the checkpoint at or before it
    assert ticks * 50 < whole, (ticks, whole)
    # The state the fold of the whole prefix gives.
    state = folded[number]
    assert (answer["status"], answer["message"]) == (state.status, state.message)
    target = answer["configuration"]["chunk_processing"]["target_length"]
    assert target == state.configuration["chunk_processing"]["target_length"]


@pytest.mark.parametrize("number", MOMENTS, ids=lambda n: f"v{n}")
def test_as_of_a_time_in_a_100000_event_task_is_a_bounded_read(reads, whole, ledger, number):
    counter, alice = reads
    store = Store(ledger.db)
    try:
        (event,) = store.history(LONG, after=number - 1, limit=1)
    finally:
        store.close()
    moment = event.recorded_at.isoformat()
    ticks, events, answer = counter.of(as_of(alice, LONG, as_of=moment))
    assert events < CHECKPOINT_EVERY
    assert ticks * 50 < whole, (ticks, whole)
    assert answer == as_of(alice, LONG, as_of_version=number)()
    # A moment between two events is the earlier one's.
    between = (event.recorded_at + timedelta(microseconds=500)).isoformat()
    assert as_of(alice, LONG, as_of=between)() == answer


# -- the limit on a task's events -----------------------------------------------------------------


def test_the_10001st_event_is_refused_with_429_and_nothing_appended(ledger, server):
    alice = server.client(ledger.alice)
    assert version(ledger, AT_LIMIT) == 10_000
    response = alice.patch(f"/task/{AT_LIMIT}/parse", json={"ocr_strategy": "Auto"})
    assert (response.status_code, response.text) == (429, LIMIT_MESSAGE)
    assert response.headers["content-type"].startswith("text/plain")
    assert "Retry-After" not in response.headers  # waiting does not help
    assert version(ledger, AT_LIMIT) == 10_000
    # A refusal is not kept for an Idempotency-Key: each retry is decided afresh, and refused.
    for _ in range(2):
        again = alice.patch(
            f"/task/{AT_LIMIT}/parse", json={}, headers={"Idempotency-Key": "limit-1"}
        )
        assert (again.status_code, again.text) == (429, LIMIT_MESSAGE)
    assert version(ledger, AT_LIMIT) == 10_000
    # The task is still there to read, and to delete.
    assert alice.get(f"/task/{AT_LIMIT}").json()["status"] == "Succeeded"
    assert alice.delete(f"/task/{AT_LIMIT}").status_code == 200
    assert version(ledger, AT_LIMIT) == 10_001


def test_a_run_started_before_the_limit_finishes_after_it(ledger, server):
    alice, worker = server.client(ledger.alice), server.client(ledger.worker)
    # The 10,000th event: an update is still allowed.
    response = alice.patch(f"/task/{BELOW_LIMIT}/parse", json={"ocr_strategy": "Auto"})
    assert response.status_code == 200, response.text
    assert version(ledger, BELOW_LIMIT) == 10_000
    # The run it started is claimed, its lease renewed and completed past the limit: a claimed
    # task is never stranded.
    claimed = worker.post("/worker/claim", json={"worker_id": "w1"})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["task_id"] == BELOW_LIMIT
    beat = worker.post(f"/task/{BELOW_LIMIT}/heartbeat", json={"worker_id": "w1"})
    assert beat.status_code == 200, beat.text
    done = worker.post(
        f"/task/{BELOW_LIMIT}/complete",
        json={"worker_id": "w1", "output": chunkr_output("story.txt")},
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "Succeeded"
    assert version(ledger, BELOW_LIMIT) == 10_003
    # No new run.
    response = alice.patch(f"/task/{BELOW_LIMIT}/parse", json={})
    assert (response.status_code, response.text) == (429, LIMIT_MESSAGE)
    assert version(ledger, BELOW_LIMIT) == 10_003


def test_the_limit_is_set_with_serve_max_events_per_task(serve):
    server = serve("--max-events-per-task", "4", "--sweep-interval", "0")
    alice = server.client(add_key(server.db, "alice"))
    worker = server.client(add_key(server.db, "pool", "worker"))

    def run() -> None:
        claimed = worker.post("/worker/claim", json={"worker_id": "w1"})
        assert claimed.status_code == 200, claimed.text
        output = {"worker_id": "w1", "output": chunkr_output("a.txt")}
        done = worker.post(f"/task/{task_id}/complete", json=output)
        assert done.status_code == 200, done.text

    created = alice.post("/task/parse", json={"file": "aGVsbG8=", "file_name": "a.txt"})
    task_id = created.json()["task_id"]
    run()  # 3 events
    assert alice.patch(f"/task/{task_id}/parse", json={}).status_code == 200  # the 4th
    run()  # the run under way finishes: 6 events
    response = alice.patch(f"/task/{task_id}/parse", json={})
    assert (response.status_code, response.text) == (
        429,
        "This task has reached its limit of 4 events; create a new task",
    )
    history = alice.get(f"/task/{task_id}/events").json()
    assert [e["version"] for e in history] == [1, 2, 3, 4, 5, 6]
