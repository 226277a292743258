"""Group commit: one writer thread per process turns many concurrent commands into few
transactions.

Callers ``submit`` a Request and get a Future (or, on an event loop, ``await submit_async``).
The writer takes its process's write turn, then every request waiting at that moment (up to
``max_batch``), runs them through ``CommandHandler.execute_batch`` in one transaction with one
fsync, then resolves all their futures. A command the decider refuses gets its error; the rest
of its batch commits. This is event-loop machinery (futures settled with one loop wake-up per
batch, loops parked while a batch runs), so it lives beside the API, not in ``ledger``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Self

from ledger.handler import Chore, CommandHandler, Outcome, Request


class Writer:
    def __init__(
        self, handler: CommandHandler, *, max_batch: int = 256, park_limit: float = 0.05
    ) -> None:
        self.handler = handler
        self.max_batch = max_batch
        #: The longest an event loop is parked while a batch runs (see Pause); 0 never parks.
        self.park_limit = park_limit
        self._queue: queue.SimpleQueue[tuple[Request | Chore, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="taskledger-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()
        #: Batches committed and commands in them, for the benchmark and tests.
        self.batches = 0
        self.commands = 0
        self.busy = False
        #: The last batch's commands, and how long its transaction took (BEGIN to the end of
        #: COMMIT, the wait for the write turn not included): for the listeners (api.metrics).
        self.last_batch_size = 0
        self.last_batch_seconds: float | None = None
        self._listeners: list[Callable[[Sequence[Any]], None]] = []

    def listen(self, listener: Callable[[Sequence[Any]], None]) -> None:
        """Call ``listener(results)`` on the writer thread after each batch, once its answers
        are delivered; ``results`` are the batch's Outcomes and errors, in order. It must be
        quick; what it raises is dropped (``api.live.Watch.committed`` wakes the waiting
        readers)."""
        self._listeners.append(listener)

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def submit(self, request: Request) -> Future[Outcome]:
        if not self._started:
            self.start()
        future: Future[Outcome] = Future()
        self._queue.put((request, future))
        return future

    def submit_chore(self, chore: Chore) -> Future[Any]:
        """Run ``chore`` in the next batch's transaction (alone if no command is waiting): its
        writes share that batch's commit (and fsync) instead of paying for one of their own."""
        if not self._started:
            self.start()
        future: Future[Any] = Future()
        self._queue.put((chore, future))
        return future

    def submit_async(self, request: Request) -> asyncio.Future[Outcome]:
        """Submit from an event loop. The writer settles every future of a batch that belongs
        to one loop with a single wake-up of that loop, instead of one per command."""
        if not self._started:
            self.start()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put((request, future))
        return future

    def stop(self, timeout: float | None = 10) -> None:
        """Finish what was submitted, then stop the thread."""
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = [first], False
            try:
                # Wait for this process's turn to write first, then collect the batch: what
                # arrives while another process holds the database joins this transaction.
                with self.handler.log.write_turn():
                    batch, stopping = take_more(self._queue, first, self.max_batch)
                    started = time.perf_counter()
                    with Pause.loops_of(batch, self.park_limit) as pause:
                        results = self.handler.execute_batch(
                            [request for request, _ in batch],
                            begun=pause.start,
                            before_commit=pause.end,
                        )
                    self.last_batch_seconds = time.perf_counter() - started
            except BaseException as exc:
                results = [exc] * len(batch)
                self.last_batch_seconds = None  # the batch failed: no commit to time
            self.batches += 1
            commands = sum(isinstance(request, Request) for request, _ in batch)
            #: Whether commands are coming in faster than one at a time (the last batch held
            #: several, or more wait): the API is busy, and background work yields to it.
            self.busy = commands > 1 or not self._queue.empty()
            self.commands += commands
            self.last_batch_size = commands
            on_loops: list[tuple[asyncio.Future, Any, bool]] = []
            for (_, future), result in zip(batch, results, strict=True):
                failed = isinstance(result, BaseException)
                if isinstance(future, asyncio.Future):
                    on_loops.append((future, result, failed))
                elif failed:
                    future.set_exception(result)
                else:
                    future.set_result(result)
            deliver(on_loops)
            for listener in self._listeners:
                try:
                    listener(results)
                except Exception:  # a listener's fault must never stop the writer
                    pass
            if stopping:
                return


class Pause:
    """Park the event loops whose requests are in a batch while the batch's commands run
    (``start``, called once its transaction has begun), and let them go before COMMIT (``end``).

    The writer's commands are short runs of Python between SQLite calls, and each SQLite call
    gives up the GIL; with the event loop busy in the same process, getting it back costs a
    thread switch each time (a create cost the writer about 119 microseconds of CPU in the
    server against 65 alone; the switches are part of that). Parked in a callback that waits
    on an Event (the GIL released), a loop stops competing for that short while and runs again
    during COMMIT, whose page writes and fsync need no GIL: about 15% more creates per second
    from one process, in alternating runs. The writer never waits for a loop to park: a loop
    busy with other callbacks parks when it gets to this one, or not at all if the batch is
    past its commands by then. A loop is never held longer than ``longest`` seconds (a batch of
    big blobs, say): then it runs again alongside the rest of the batch."""

    def __init__(self, loops: set[asyncio.AbstractEventLoop], longest: float = 0.05) -> None:
        self._loops = loops
        self._longest = longest
        self._release = threading.Event()

    @classmethod
    def loops_of(cls, batch: list[tuple[Any, Any]], longest: float) -> Pause:
        if longest <= 0:
            return cls(set(), 0)
        return cls({f.get_loop() for _, f in batch if isinstance(f, asyncio.Future)}, longest)

    def start(self) -> None:
        for loop in self._loops:
            try:
                loop.call_soon_threadsafe(self._hold)
            except RuntimeError:  # that loop has closed
                pass

    def _hold(self) -> None:  # runs on a loop
        self._release.wait(self._longest)

    def end(self) -> None:
        self._release.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # whatever happened, never leave a loop parked


def take_waiting(source: queue.SimpleQueue, limit: int) -> tuple[list[Any], bool]:
    """Block for one item, then take every item already waiting (up to ``limit``). ``None`` in
    the queue means stop: the items before it are returned with ``stopping`` set."""
    first = source.get()
    if first is None:
        return [], True
    return take_more(source, first, limit)


def take_more(source: queue.SimpleQueue, first: Any, limit: int) -> tuple[list[Any], bool]:
    """``first`` and every item already waiting behind it (up to ``limit`` in all); ``None``
    means stop, as in take_waiting."""
    items = [first]
    while len(items) < limit:
        try:
            nxt = source.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            return items, True
        items.append(nxt)
    return items, False


def deliver(settled: list[tuple[asyncio.Future, Any, bool]]) -> None:
    """From a worker thread: settle event-loop futures, each ``(future, result, failed)``, with
    one wake-up per loop (``call_soon_threadsafe``) instead of one per future."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any, bool]]] = {}
    for item in settled:
        by_loop.setdefault(item[0].get_loop(), []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # that loop has closed: nobody is waiting any more
            pass


def _settle(settled: list[tuple[asyncio.Future, Any, bool]]) -> None:
    for future, outcome, failed in settled:
        if future.done():  # the awaiting request was cancelled (its client hung up)
            continue
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
