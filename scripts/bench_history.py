"""Reading one long task's history: a task with 100,000 events, then the time of
``as_of_version=1``, ``as_of_version=50000``, ``as_of=<the time of event 50,000>`` and one page
of ``/task/{id}/events``, in process (the service's use cases, as the HTTP handlers call them)
and over HTTP against a real ``taskledger serve``. The median and the 90th percentile of
``--runs`` requests each, one at a time. For comparison, in process: what reading the whole
history and folding it costs (what time travel did before checkpoints).

    python -m scripts.bench_history [--events 100000] [--runs 50]

BENCHMARKS.md's "One long task's history" was measured with it.

``grow`` is how the task is built (the tests build theirs with it too): every command is decided
by the real decider, appended one command at a time with its own envelope, and the inline
projections (task row, queue, checkpoints) are applied once per slice of commands, in one
transaction per slice; far faster than the command handler's one state load and save per
command, and the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from api.composition import Store
from ledger.commands import (
    AnyCommand,
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    UpdateTask,
)
from ledger.decider import decide, fold, initial_state
from ledger.events import blob_ref
from ledger.log import Actor, Envelope, RecordedEvent, stream_id_for, task_events
from ledger.state import TaskState
from projections.checkpoints import CHECKPOINT_EVERY

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INPUT = b"a long story\n"
OUTPUT = json.dumps({"chunks": [], "file_name": "story.txt", "page_count": 1}).encode()
USER = Actor(key_id="bench", role="user")
WORKER = Actor(key_id="bench-worker", role="worker")


def _story(
    task_id: str, events: int, owner: str, start: datetime, step: timedelta
) -> Iterator[list[tuple[AnyCommand, Actor]]]:
    """The commands, a cycle at a time (each cycle ends with the task Succeeded): created,
    claimed, succeeded; then update and cancel (two events, the cancel puts the succeeded
    task back) as often as it takes, and once update, claim, complete (three events) when the
    count left is odd."""
    if events < 3 or events == 4:
        raise ValueError("grow makes 3 events or more (not 4): a task ends Succeeded")
    clock = (start + step * n for n in range(10**12))

    def run() -> list[tuple[AnyCommand, Actor]]:
        claim_at, done_at = next(clock), next(clock)
        return [
            (
                ClaimTask(
                    task_id=task_id,
                    at=claim_at,
                    worker_id="w",
                    lease_until=claim_at + timedelta(hours=1),
                ),
                WORKER,
            ),
            (
                CompleteTask(task_id=task_id, at=done_at, worker_id="w", output=blob_ref(OUTPUT)),
                WORKER,
            ),
        ]

    create = CreateTask(
        task_id=task_id,
        at=next(clock),
        owner=owner,
        configuration={"chunk_processing": {"target_length": 512}},
        file=blob_ref(INPUT),
        file_name="story.txt",
    )
    yield [(create, USER), *run()]
    left = events - 3
    if left % 2:
        yield [(UpdateTask(task_id=task_id, at=next(clock), configuration={}), USER), *run()]
        left -= 3
    for n in range(left // 2):
        update = UpdateTask(
            task_id=task_id,
            at=next(clock),
            configuration={"chunk_processing": {"target_length": 512 + n % 7}},
        )
        yield [(update, USER), (CancelTask(task_id=task_id, at=next(clock)), USER)]


def grow(
    store: Store,
    task_id: str,
    events: int,
    *,
    owner: str = "alice",
    start: datetime = T0,
    step: timedelta = timedelta(milliseconds=1),
    slice_events: int = 10_000,
) -> TaskState:
    """Create ``task_id`` with exactly ``events`` events (3 or more, not 4), ending Succeeded,
    each command recorded ``step`` after the one before from ``start``. Returns its state."""
    state = initial_state(task_id)
    stream = stream_id_for(task_id)
    pending: list[list[tuple[AnyCommand, Actor]]] = []

    def flush() -> None:
        nonlocal state
        if not pending:
            return
        with store.log.transaction() as tx:
            if state.version == 0:
                store.log.put_blob(task_id, INPUT, tx=tx)
                store.log.put_blob(task_id, OUTPUT, tx=tx)
            before = state
            recorded: list[RecordedEvent] = []
            for cycle in pending:
                for command, actor in cycle:
                    decided = decide(command, state)
                    envelope = Envelope(recorded_at=command.at, actor=actor, request_id=None)
                    recorded += store.log.append(stream, state.version, decided, envelope, tx=tx)
                    state = fold(decided, state)
            # Each slice starts and ends with the task Succeeded (not claimable), so applying
            # the projections once per slice writes what once per command would.
            for projection in store.handler.projections:
                projection.apply(tx, before, state, recorded)
        pending.clear()

    in_slice = 0
    for cycle in _story(task_id, events, owner, start, step):
        pending.append(cycle)
        in_slice += len(cycle)
        if in_slice >= slice_events:
            flush()
            in_slice = 0
    flush()
    assert state.version == events, (state.version, events)
    return state


# -- measuring --------------------------------------------------------------------------------


def worst_version(version: int) -> int:
    """The version at or after ``version`` with the most events to fold past a checkpoint."""
    return version - version % CHECKPOINT_EVERY + CHECKPOINT_EVERY - 1


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    fn()  # warm up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 2),
        "p90_ms": round(seconds[int(len(seconds) * 0.9) - 1] * 1000, 2),
    }


def in_process(
    db: Path, task_id: str, half: int, middle: datetime, runs: int
) -> dict[str, dict[str, float]]:
    from api.composition import close_service, open_service
    from api.policy import OPERATOR
    from api.schemas import encode, render_view
    from api.settings import Settings

    worst = worst_version(half)

    async def measure() -> dict[str, dict[str, float]]:
        service = open_service(Settings(db_path=db, sweep_interval=0))
        loop = asyncio.get_running_loop()
        try:
            links = service.linker(OPERATOR, "http://bench")

            def render(view: Any) -> bytes:
                return encode(render_view(view, links, True))

            async def one(coro_fn: Callable[[], Any]) -> dict[str, float]:
                await coro_fn()
                seconds = []
                for _ in range(runs):
                    started = loop.time()
                    await coro_fn()
                    seconds.append(loop.time() - started)
                seconds.sort()
                return {
                    "median_ms": round(statistics.median(seconds) * 1000, 2),
                    "p90_ms": round(seconds[int(len(seconds) * 0.9) - 1] * 1000, 2),
                }

            return {
                "as_of_version=1": await one(
                    lambda: service.get_as(OPERATOR, task_id, render, as_of_version=1)
                ),
                f"as_of_version={half}": await one(
                    lambda: service.get_as(OPERATOR, task_id, render, as_of_version=half)
                ),
                f"as_of_version={worst} (most events past a checkpoint)": await one(
                    lambda: service.get_as(OPERATOR, task_id, render, as_of_version=worst)
                ),
                "as_of=<middle time>": await one(
                    lambda: service.get_as(OPERATOR, task_id, render, as_of=middle)
                ),
                f"events page (after={half}, limit=1000)": await one(
                    lambda: service.history(OPERATOR, task_id, after=half, limit=1000)
                ),
                "get (now)": await one(lambda: service.get_as(OPERATOR, task_id, render)),
            }
        finally:
            close_service(service)

    figures = asyncio.run(measure())
    store = Store(db)
    try:
        figures["whole history read and folded (before checkpoints)"] = timed(
            lambda: fold(task_events(store.log.read_stream(stream_id_for(task_id)))),
            max(3, runs // 10),
        )
    finally:
        store.close()
    return figures


def over_http(
    db: Path, task_id: str, half: int, middle: datetime, runs: int
) -> dict[str, dict[str, float]]:
    import httpx

    from scripts.bench import start_taskledger

    worst = worst_version(half)
    server, key = start_taskledger(db)
    try:
        base = f"http://127.0.0.1:{server.port}/api/v1"
        with httpx.Client(base_url=base, headers={"Authorization": key}, timeout=60) as client:

            def get(path: str, **params: Any) -> Callable[[], None]:
                def call() -> None:
                    response = client.get(path, params=params)
                    assert response.status_code == 200, response.text

                return call

            when = middle.isoformat().replace("+00:00", "Z")
            return {
                "as_of_version=1": timed(get(f"/task/{task_id}", as_of_version=1), runs),
                f"as_of_version={half}": timed(get(f"/task/{task_id}", as_of_version=half), runs),
                f"as_of_version={worst} (most events past a checkpoint)": timed(
                    get(f"/task/{task_id}", as_of_version=worst), runs
                ),
                "as_of=<middle time>": timed(get(f"/task/{task_id}", as_of=when), runs),
                f"events page (after={half}, limit=1000)": timed(
                    get(f"/task/{task_id}/events", after=half, limit=1000), runs
                ),
                "get (now)": timed(get(f"/task/{task_id}"), runs),
            }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="taskledger-history-"))
    db = work / "ledger.db"
    task_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    store = Store(db, synchronous="OFF")
    started = time.perf_counter()
    grow(store, task_id, args.events)
    built = time.perf_counter() - started
    half = args.events // 2
    (middle_event,) = store.history(task_id, after=half - 1, limit=1)
    store.close()
    middle = middle_event.recorded_at
    report = {
        "events": args.events,
        "built_in_s": round(built, 1),
        "in_process": in_process(db, task_id, half, middle, args.runs),
        "http": over_http(db, task_id, half, middle, args.runs),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"A task with {args.events:,} events (built in {report['built_in_s']} s); ms, median/p90")
    for where in ("in_process", "http"):
        print(f"\n{where.replace('_', ' ')}:")
        for name, figure in report[where].items():
            print(f"  {name:55} {figure['median_ms']:8.2f} {figure['p90_ms']:8.2f}")


if __name__ == "__main__":
    main()
