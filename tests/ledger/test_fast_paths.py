"""The write path's shortcuts keep the handler's promises: a clean batch runs without
savepoints, a refusal does not force the careful retry, and the writer hands results to an event
loop with one wake-up per batch, including errors and requests given up meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest
from stories import at, blob, check_consistent, envelope, new_id

from api.groupcommit import Writer
from ledger.commands import CancelTask, CreateTask
from ledger.errors import TaskNotFound
from ledger.handler import Request
from ledger.log import stream_id_for


def create_request(task_id, data=b"file", after_append=None):
    return Request(
        command=CreateTask(
            task_id=task_id, at=at(0), owner="alice", configuration={}, file=blob(data)
        ),
        envelope=envelope(at(0)),
        blobs=(data,),
        after_append=after_append,
    )


def traced(store):
    statements: list[str] = []
    store.log._writer.set_trace_callback(statements.append)
    return statements


def test_a_clean_batch_and_a_refusal_use_no_savepoint(store):
    statements = traced(store)
    ids = [new_id() for _ in range(5)]
    results = store.handler.execute_batch(
        [create_request(i, i.encode()) for i in ids]
        + [Request(command=CancelTask(task_id=new_id(), at=at(1)), envelope=envelope(at(1)))]
    )
    assert [type(r).__name__ for r in results] == ["Outcome"] * 5 + ["TaskNotFound"]
    assert not [s for s in statements if s.startswith("SAVEPOINT")]
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    # The chain head is read once per transaction, not once per append.
    assert sum("FROM sqlite_sequence" in s for s in statements) == 1
    check_consistent(store)


def test_a_failure_after_writing_reruns_the_batch_with_savepoints(store):
    statements = traced(store)
    a, b, c = new_id(), new_id(), new_id()

    def explode(tx, outcome):
        raise RuntimeError("after the append")

    results = store.handler.execute_batch(
        [create_request(a, b"a"), create_request(b, b"b", explode), create_request(c, b"c")]
    )
    assert isinstance(results[1], RuntimeError)
    assert statements.count("ROLLBACK") == 1  # the unguarded attempt, undone whole
    assert statements.count("SAVEPOINT command") == 3
    assert statements.count("COMMIT") == 1
    # Positions stay gapless and the chain continues across the undone command.
    assert [r.position for r in results[0].recorded + results[2].recorded] == [1, 2]
    assert store.log.read_stream(stream_id_for(b)) == []
    check_consistent(store)


def test_appends_in_later_transactions_continue_the_chain(store):
    for _ in range(3):
        store.handler.execute_batch([create_request(new_id(), new_id().encode()) for _ in range(4)])
    rows = [r.chained() | {"hash": r.hash} for r in store.log.iter_stored()]
    assert [r["position"] for r in rows] == list(range(1, 13))
    check_consistent(store)


def test_submit_async_settles_results_and_errors_on_the_loop(store):
    writer = Writer(store.handler)

    async def main():
        good = [writer.submit_async(create_request(new_id(), new_id().encode())) for _ in range(20)]
        bad = writer.submit_async(
            Request(command=CancelTask(task_id=new_id(), at=at(1)), envelope=envelope(at(1)))
        )
        # A request whose client went away: its future is cancelled; the batch still settles.
        dropped = writer.submit_async(create_request(new_id(), b"dropped"))
        dropped.cancel()
        outcomes = await asyncio.gather(*good)
        with pytest.raises(TaskNotFound):
            await bad
        return outcomes

    try:
        outcomes = asyncio.run(main())
    finally:
        writer.stop()
    assert all(o.after.status == "Starting" for o in outcomes)
    # Every command ran, including the one whose caller gave up waiting.
    assert writer.commands == 22
    check_consistent(store)


def test_the_hooks_run_after_begin_and_just_before_commit(store):
    statements = traced(store)
    seen: list[str] = []
    results = store.handler.execute_batch(
        [create_request(new_id(), b"one"), create_request(new_id(), b"two")],
        begun=lambda: seen.append(f"begun after {statements[-1]!r}"),
        before_commit=lambda: seen.append(f"before_commit after {len(statements)} statements"),
    )
    assert all(not isinstance(r, BaseException) for r in results)
    assert seen[0] == "begun after 'BEGIN IMMEDIATE'"
    # Called once every command has written, before COMMIT (the last statement of the batch).
    assert seen[1] == f"before_commit after {statements.index('COMMIT')} statements"


class Ticker:
    """Counts the turns an event loop takes, to see when it is parked."""

    def __init__(self) -> None:
        self.turns = 0
        self.running = True

    async def run(self) -> None:
        while self.running:
            self.turns += 1
            await asyncio.sleep(0)

    def submit(self, writer: Writer, request: Request, setup=lambda: None):
        """Run an event loop that ticks, submit ``request`` to ``writer`` from it, return the
        outcome (and stop the writer)."""

        async def main():
            ticking = asyncio.ensure_future(self.run())
            await asyncio.sleep(0.01)
            setup()
            try:
                return await writer.submit_async(request)
            finally:
                self.running = False
                await ticking

        try:
            return asyncio.run(main())
        finally:
            writer.stop()


def test_the_loop_is_parked_while_its_batch_runs_and_freed_before_commit(store):
    writer = Writer(store.handler, park_limit=30)  # no cap in the way of what is tested here
    ticker = Ticker()
    during: list[int] = []
    at_commit: list[int] = []

    def slow_reply(tx, outcome):
        # Runs in the writer, between the transaction's start and its COMMIT.
        time.sleep(0.5)  # time for the loop to reach the park callback, even on a busy machine
        during.append(ticker.turns)
        time.sleep(0.2)
        during.append(ticker.turns)
        return "reply"

    def commit_trace(sql: str) -> None:
        if sql == "COMMIT":
            time.sleep(0.2)  # the loop runs again while COMMIT goes on
            at_commit.append(ticker.turns)

    outcome = ticker.submit(
        writer,
        create_request(new_id(), b"slow", slow_reply),
        setup=lambda: store.log._writer.set_trace_callback(commit_trace),
    )
    assert outcome.extra == "reply"
    assert during[0] == during[1], "the loop kept running while the batch's commands ran"
    assert at_commit and at_commit[0] > during[1], "the loop stayed parked during COMMIT"


def test_a_long_batch_parks_the_loop_only_for_the_limit(store):
    writer = Writer(store.handler, park_limit=0.05)
    ticker = Ticker()
    seen: list[int] = []

    def very_slow_reply(tx, outcome):
        seen.append(ticker.turns)
        time.sleep(1.0)  # far past the limit: the loop must be running again meanwhile
        seen.append(ticker.turns)
        return "reply"

    outcome = ticker.submit(writer, create_request(new_id(), b"long", very_slow_reply))
    assert outcome.extra == "reply"
    assert seen[1] > seen[0], "the loop stayed parked past the limit"


def longest_stall(park_limit: float, store) -> float:
    """The longest a concurrent coroutine on the loop waited for its turn while a 0.6 s batch
    ran in the writer with ``park_limit``."""
    writer = Writer(store.handler, park_limit=park_limit)
    ticker = Ticker()
    stamps: list[float] = []

    async def watch() -> None:
        while ticker.running:
            stamps.append(time.perf_counter())
            await asyncio.sleep(0.001)

    def slow_reply(tx, outcome):
        time.sleep(0.6)
        return "reply"

    watcher: list[asyncio.Future] = []
    outcome = ticker.submit(
        writer,
        create_request(new_id(), b"slow", slow_reply),
        setup=lambda: watcher.append(asyncio.ensure_future(watch())),
    )
    assert outcome.extra == "reply"
    return max(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def test_the_park_limit_setting_bounds_how_long_a_concurrent_request_waits(store):
    """``serve --park-ms``: parked for up to 300 ms, a concurrent request on the loop waits
    about that long for its turn; with 0 the loop is never parked and it hardly waits."""
    parked = longest_stall(0.3, store)
    free = longest_stall(0, store)
    assert parked >= 0.2, parked
    assert free < parked / 2, (free, parked)


class Boom(BaseException):
    """Not an Exception: gets past every ``except Exception`` on the way out of the batch."""


def test_a_failed_batch_never_leaves_the_loop_parked(store):
    writer = Writer(store.handler)

    def explode(tx, outcome):
        raise RuntimeError("after the append")

    async def main():
        failing = writer.submit_async(create_request(new_id(), b"boom", explode))
        with pytest.raises(RuntimeError):
            await failing
        # The loop still runs: timers fire and the next batch is answered.
        await asyncio.sleep(0.01)
        return await writer.submit_async(create_request(new_id(), b"after"))

    try:
        outcome = asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        writer.stop()
    assert outcome.after.status == "Starting"
    check_consistent(store)


def test_an_escaping_error_never_leaves_the_loop_parked(store):
    # The batch ends by an error no handler catches (before COMMIT, so the before_commit hook
    # never runs): only the writer's own clean-up can let the loop go.
    writer = Writer(store.handler, park_limit=30)
    ticker = Ticker()
    seen: list[int] = []

    def escape(tx, outcome):
        time.sleep(0.5)  # let the loop park
        seen.append(ticker.turns)
        raise Boom()

    async def main():
        ticking = asyncio.ensure_future(ticker.run())
        await asyncio.sleep(0.01)
        with pytest.raises(Boom):
            await writer.submit_async(create_request(new_id(), b"escape", escape))
        before = ticker.turns
        await asyncio.sleep(0.05)
        ticker.running = False
        await ticking
        return before

    started = time.monotonic()
    try:
        after_error = asyncio.run(main())
    finally:
        writer.stop()
    # Parked until the 30 s limit, it would have taken that long.
    assert time.monotonic() - started < 10
    assert after_error >= seen[0]
    assert ticker.turns > after_error  # the loop kept running after the failed batch
