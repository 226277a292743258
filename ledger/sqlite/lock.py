"""The cross-process write lock: server processes on one SQLite file take turns to write."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from ledger.errors import StorageUnavailable

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy timeout alone serialises the processes
    fcntl = None  # type: ignore[assignment]


class _Ticket:
    """One wait for the lock on the helper thread: granted, or given up by the waiter."""

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.lock = threading.Lock()
        self.abandoned = False


class ProcessWriteLock:
    """An exclusive ``flock`` on ``<db>-writelock`` that the writers of every process on one
    database take around their write transactions. A free lock is taken at once; a held one is
    waited for in the kernel (``flock`` on a helper thread, the GIL released), which wakes the
    moment the other process lets go. Without it, a process that finds the database locked polls
    in SQLite's busy handler, sleeping 1, 2, 5 ... 100 ms between tries, and two busy server
    processes spend much of their time asleep. After ``timeout`` seconds (the busy timeout) the
    waiter gives up with StorageUnavailable, as SQLite's busy handler would, so a process that
    holds the lock for long (a ``taskledger rebuild``, a stopped process) costs the others a
    503, not a hang; the helper lets the lock go again if it gets it after that. The lock dies
    with its process, so a crashed writer never leaves it held. Re-entrant within the thread
    that holds the log's write lock (callers hold that lock around acquire/release)."""

    def __init__(self, db_path: Path, timeout: float = 10.0) -> None:
        self.path = Path(f"{db_path}-writelock")
        self.timeout = timeout
        self._fd: int | None = None  # tried without blocking by the writer
        self._wait_fd: int | None = None  # waited on by the helper (a lock of its own)
        self._held: int | None = None  # whichever of the two holds the lock now
        self._depth = 0
        self._tickets: queue.SimpleQueue[tuple[int, _Ticket] | None] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:  # made by another user: flock needs no write access
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def acquire(self) -> None:
        if fcntl is None:
            return
        if self._depth == 0:
            if self._fd is None:
                self._fd = self._open()
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = self._fd
            except BlockingIOError:
                self._held = self._wait()
        self._depth += 1

    def _wait(self) -> int:
        if self._wait_fd is None:
            self._wait_fd = self._open()
        if self._helper is None:
            self._helper = threading.Thread(
                target=self._serve, name="taskledger-writelock", daemon=True
            )
            self._helper.start()
        ticket = _Ticket()
        self._tickets.put((self._wait_fd, ticket))
        if not ticket.granted.wait(self.timeout):
            with ticket.lock:
                if not ticket.granted.is_set():
                    ticket.abandoned = True
                    raise StorageUnavailable(
                        "The database cannot be written right now (another process has held"
                        f" its write lock for {self.timeout:g} s)"
                    )
        return self._wait_fd

    def _serve(self) -> None:  # the helper thread
        while True:
            item = self._tickets.get()
            if item is None:  # the log is closing: this thread owns the waiting fd
                if self._wait_fd is not None:
                    os.close(self._wait_fd)
                    self._wait_fd = None
                return
            fd, ticket = item
            fcntl.flock(fd, fcntl.LOCK_EX)
            with ticket.lock:
                if ticket.abandoned:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    continue
                ticket.granted.set()

    def release(self) -> None:
        if fcntl is None or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._held is not None:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._held = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        if self._helper is not None:
            # The helper closes the waiting fd once it is done with any wait in progress (a
            # wait that never ends leaves it open until the process exits).
            self._tickets.put(None)
            self._helper = None
        elif self._wait_fd is not None:
            os.close(self._wait_fd)
            self._wait_fd = None
        self._fd = self._held = None
        self._depth = 0
