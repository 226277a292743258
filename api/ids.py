"""Task and request ids."""

from __future__ import annotations

import os
import threading
import time
import uuid


class _Random:
    """Random bytes from the OS, fetched 4 KiB at a time: one system call per 256 ids instead
    of one per id (``uuid.uuid4`` calls ``os.urandom`` each time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            chunk = self._pool[self._at : self._at + n]
            self._at += n
            return chunk


_random = _Random()


def new_task_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then 74 random
    bits. Still a UUID, as Chunkr's task ids are, and still unguessable, but ids made close in
    time sort close together, so each create appends at the right edge of the B-trees keyed by
    task id (tasks, queue, blob references, the events' stream index) instead of dirtying a
    random page of each, which the commit would then have to write."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(_random.take(10))
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    return str(uuid.UUID(int=value))


def new_request_id() -> str:
    return _random.take(16).hex()
