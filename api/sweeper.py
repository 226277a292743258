"""The sweepers, a background task inside the server: expired leases (re-queued, or timed out
once ``max_attempts`` claims have run out) and expired tasks (tombstoned: 404 from then on,
blobs purged, events kept), through ``TaskLedger.sweep``.

Several server processes may sweep the same database. That is safe without any leader election:
each sweep command is decided against the task's current state inside the write transaction, so
whichever process comes second finds nothing to do (the decider returns no events).
"""

from __future__ import annotations

import asyncio

import structlog

from api.service import TaskLedger

log = structlog.get_logger("taskledger.sweeper")


async def sweep_once(service: TaskLedger) -> dict[str, int]:
    """One pass of both sweepers; returns how many leases and tasks it expired."""
    counts = {"leases_expired": 0, "timed_out": 0, "tasks_expired": 0}
    for command, outcome in await service.sweep():
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


async def run_sweepers(service: TaskLedger) -> None:
    interval = service.settings.sweep_interval
    while True:
        try:
            await sweep_once(service)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("sweep_error", error_type=type(exc).__name__, error=str(exc))
        await asyncio.sleep(interval)
