"""The read pool: results and errors come back to the awaiting coroutine, many concurrent reads
all settle, and closing it stops its threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.readpool import ReadPool


def test_results_errors_and_threads():
    pool = ReadPool(threads=2)

    def where(n):
        return n * 2, threading.current_thread().name

    def fail():
        raise LookupError("no such row")

    async def main():
        results = await asyncio.gather(*(pool.run(where, n) for n in range(200)))
        with pytest.raises(LookupError, match="no such row"):
            await pool.run(fail)
        return results

    try:
        results = asyncio.run(main())
    finally:
        pool.close()
    assert [r[0] for r in results] == [n * 2 for n in range(200)]
    # The reads ran on the pool's threads, never on the event loop's.
    assert {r[1] for r in results} <= {"taskledger-reader-0", "taskledger-reader-1"}
    assert not any(t.is_alive() for t in pool._threads)


def test_a_cancelled_read_does_not_disturb_the_others():
    pool = ReadPool(threads=1)
    gate = threading.Event()

    async def main():
        blocked = asyncio.ensure_future(pool.run(gate.wait, 5))
        given_up = asyncio.ensure_future(pool.run(lambda: "late"))
        await asyncio.sleep(0.05)
        given_up.cancel()
        gate.set()
        assert await blocked is True
        return await pool.run(lambda: "after")

    try:
        assert asyncio.run(main()) == "after"
    finally:
        pool.close()
