"""The sweepers, on a thread of their own inside the server: expired leases (re-queued, or timed
out once ``max_attempts`` claims have run out) and expired tasks (tombstoned: 404 from then on,
blobs purged, events kept), through ``TaskLedger.sweep``.

Their reads run on this thread's own read connection and their commands go straight to the
group-commit writer, so neither the read pool (busy with the API's reads, however many) nor the
event loop (however many streams it serves) stands between an expired lease and its re-queue.

Several server processes may sweep the same database. That is safe without any leader election:
each sweep command is decided against the task's current state inside the write transaction, so
whichever process comes second finds nothing to do (the decider returns no events); the pass's
``swept`` log line counts those as ``already_done``.
"""

from __future__ import annotations

import threading

import structlog

from api import metrics
from api.service import TaskLedger

log = structlog.get_logger("taskledger.sweeper")


def sweep_once(service: TaskLedger) -> dict[str, int]:
    """One pass of both sweepers, on the calling thread; returns how many leases and tasks it
    expired, and how many it found already dealt with when its command was decided
    (``already_done``: another process swept them first, or the worker finished or extended
    the lease in between)."""
    counts = {"leases_expired": 0, "timed_out": 0, "tasks_expired": 0, "already_done": 0}
    for command, outcome in service.sweep():
        if isinstance(outcome, BaseException):
            log.warning("sweep_failed", task_id=command.task_id, error=str(outcome))
            continue
        if not outcome.recorded:
            counts["already_done"] += 1
            continue
        types = {type(r.event).__name__ for r in outcome.recorded}
        counts["leases_expired"] += "LeaseExpired" in types
        counts["timed_out"] += "TimedOut" in types
        counts["tasks_expired"] += "Expired" in types
    if any(counts.values()):
        log.info("swept", **counts)
        metrics.count_sweep(counts)
    return counts


class Sweepers:
    """The sweepers' thread: a pass every ``settings.sweep_interval`` seconds until ``stop``."""

    def __init__(self, service: TaskLedger) -> None:
        self.service = service
        self.interval = service.settings.sweep_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskledger-sweepers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the pass under way (its commands are answered by the writer, which is
        still running)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sweep_once(self.service)
            except Exception as exc:
                log.warning("sweep_error", error_type=type(exc).__name__, error=str(exc))
            self._stop.wait(self.interval)
