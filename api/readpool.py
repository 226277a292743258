"""Reads off the event loop: a few threads, each with its own read connection (the log's
thread-local reader), taking read jobs from one queue.

A thread takes every job waiting when it wakes, runs them, and settles all their futures with a
single wake-up of the event loop. Under load that is one cross-thread hand-off per batch instead
of the several per call a general thread pool (``asyncio.to_thread``, anyio) costs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from api.groupcommit import deliver, take_waiting

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future]


class ReadPool:
    def __init__(self, threads: int = 2, *, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"taskledger-reader-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a reader thread; its result or its exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, args, future))
        return await future

    def close(self, timeout: float = 5) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            jobs, stopping = take_waiting(self._queue, self.max_batch)
            if not jobs:
                return
            settled: list[tuple[asyncio.Future, Any, bool]] = []
            for fn, args, future in jobs:
                try:
                    settled.append((future, fn(*args), False))
                except BaseException as exc:
                    settled.append((future, exc, True))
            deliver(settled)
            if stopping:
                return
