"""The sweepers, a background task inside the server.

* Expired leases: ExpireLease re-queues the task (LeaseExpired) or, once ``max_attempts`` claims
  have run out, times it out (TimedOut: Failed, "Task timed out").
* Expired tasks: ExpireTask tombstones terminal tasks past ``expires_at`` (404 from then on,
  blobs purged, events kept).

Several server processes may sweep the same database. That is safe without any leader election:
each sweep command is decided against the task's current state inside the write transaction, so
whichever process comes second finds nothing to do (the decider returns no events). Each job
takes effect exactly once.
"""

from __future__ import annotations

import asyncio

import structlog

from api.runtime import Runtime, now
from ledger.commands import ExpireLease, ExpireTask

log = structlog.get_logger("taskledger.sweeper")


async def sweep_once(runtime: Runtime) -> dict[str, int]:
    """One pass of both sweepers; returns how many leases and tasks it expired."""
    at = now()
    store = runtime.store
    # reader() inside the thread: each thread reads through its own connection.
    leases = await asyncio.to_thread(lambda: store.tasks.due_leases(store.log.reader(), at))
    expiries = await asyncio.to_thread(lambda: store.tasks.due_expiries(store.log.reader(), at))
    commands = [
        ExpireLease(task_id=task_id, at=at, max_attempts=runtime.settings.max_attempts)
        for task_id in leases
    ] + [ExpireTask(task_id=task_id, at=at) for task_id in expiries]
    outcomes = await asyncio.gather(
        *(runtime.run_system(command) for command in commands), return_exceptions=True
    )
    counts = {"leases_expired": 0, "timed_out": 0, "tasks_expired": 0}
    for command, outcome in zip(commands, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("sweep_failed", task_id=command.task_id, error=str(outcome))
            continue
        types = {type(r.event).__name__ for r in outcome.recorded}
        counts["leases_expired"] += "LeaseExpired" in types
        counts["timed_out"] += "TimedOut" in types
        counts["tasks_expired"] += "Expired" in types
    if any(counts.values()):
        log.info("swept", **counts)
    return counts


async def run_sweepers(runtime: Runtime) -> None:
    interval = runtime.settings.sweep_interval
    while True:
        try:
            await sweep_once(runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed sweep is retried next interval
            log.warning("sweep_error", error_type=type(exc).__name__, error=str(exc))
        await asyncio.sleep(interval)
