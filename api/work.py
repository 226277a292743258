"""The workers' use cases: claim (with a long poll), heartbeat, complete, fail, release, the
input file, and the sweepers. Only the worker holding a task's current lease may heartbeat,
complete, fail or release it (the decider's rule); claims take the oldest claimable task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from api.contract import check_worker_id
from api.core import OCTET_STREAM, Download, Finished, ServiceCore, TaskView, log_fields, note
from api.keys import is_active
from api.live import Hold
from api.output import checked_output, summarise
from api.policy import Caller, Grant, UseCase, authorize
from api.refusals import BadRequest, InvalidKey
from ledger.commands import (
    AnyCommand,
    ClaimTask,
    CompleteTask,
    ExpireLease,
    ExpireTask,
    ExtendLease,
    FailTask,
    ReleaseTask,
)
from ledger.errors import TaskNotFound
from ledger.events import SUCCEEDED, blob_ref
from ledger.handler import NothingToDo, Outcome, Request
from ledger.log import Envelope
from ledger.state import TaskState

#: The longest a sweep waits for the writer to answer one of its commands.
SWEEP_ANSWER_SECONDS = 60.0


class WorkerCases(ServiceCore):
    async def claim(
        self,
        caller: Caller,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        wait_seconds: int = 0,
        gone: asyncio.Future[Any] | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView | None:
        """Claim the oldest claimable task for ``worker_id``, waiting up to ``wait_seconds``
        (capped by the settings) for one; None if none came, or once ``gone`` is done (the
        worker stopped listening: nothing is ever claimed for it then). A claim that waited
        re-reads its key before it tries again, and is InvalidKey (401) if it was revoked
        meanwhile: a revoked worker takes nothing."""
        authorize(UseCase.CLAIM, caller)
        worker_id = check_worker_id(worker_id)
        seconds = self.lease_for(lease_seconds)
        wait = min(wait_seconds, self.settings.max_wait_seconds)
        deadline = time.monotonic() + wait
        source = self.store.claim_source(self.claim_maker(worker_id, seconds, gone))
        parts = (worker_id, lease_seconds, wait_seconds)
        held: Hold | None = None
        first = True
        try:
            while True:
                changed = self.watch.work()
                if gone is not None and gone.done():
                    return None
                try:
                    if not first:
                        # Read on a read connection: no write transaction for an empty queue.
                        has_work, key_live = await self.reads.run(self._may_claim, caller.key_id)
                        if not key_live:
                            raise InvalidKey("Invalid or inactive API key")
                        if not has_work:
                            raise NothingToDo()
                    first = False
                    return await self._run(
                        UseCase.CLAIM,
                        caller,
                        source,
                        TaskView,
                        self._bare,
                        parts,
                        idempotency_key,
                        request_id,
                    )
                except NothingToDo:
                    if held is None and wait > 0:
                        # Held from the first wait on (a commit before it that made work is
                        # seen by the watch's first look at the log, which wakes ``changed``).
                        held = self.watch.hold(caller.key_id)
                    if not await self.wait_for_work(changed, gone, deadline, held):
                        return None
        finally:
            if held is not None:
                held.close()

    async def heartbeat(
        self,
        caller: Caller,
        task_id: str,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView:
        """Extend the lease; the answer's state holds the new ``lease_until``."""
        authorize(UseCase.HEARTBEAT, caller)
        worker_id = check_worker_id(worker_id)
        at = self.clock()
        until = at + timedelta(seconds=self.lease_for(lease_seconds))
        command = ExtendLease(task_id=task_id, at=at, worker_id=worker_id, lease_until=until)
        return await self._run(
            UseCase.HEARTBEAT,
            caller,
            command,
            TaskView,
            self._bare,
            (task_id, worker_id, lease_seconds),
            idempotency_key,
            request_id,
        )

    async def complete(
        self,
        caller: Caller,
        task_id: str,
        worker_id: str,
        output: dict[str, Any],
        *,
        claim_next: bool = False,
        lease_seconds: int | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Finished:
        """Succeed the task with a Chunkr-shaped ``output``; with ``claim_next``, then claim the
        worker's next task in the same call."""
        authorize(UseCase.COMPLETE, caller)
        worker_id = check_worker_id(worker_id)
        state = await self.reads.run(self.store.state, task_id)
        if state is None or not state.live:
            raise TaskNotFound()
        full, data = checked_output(output, state.file_name)
        ref = blob_ref(data)
        command = CompleteTask(
            task_id=task_id,
            at=self.clock(),
            worker_id=worker_id,
            output=ref,
            summary=summarise(full),
        )

        def build(tx: Any, outcome: Outcome) -> Finished:
            after = outcome.after
            if after.output == ref and after.status == SUCCEEDED:
                return Finished(task=TaskView(state=after, output=full))
            return Finished(task=self._view(tx, outcome))

        parts = (task_id, worker_id, output, claim_next, lease_seconds)
        return await self._finish(
            UseCase.COMPLETE,
            caller,
            command,
            build,
            parts,
            idempotency_key,
            request_id,
            claim_next,
            lease_seconds,
            blobs=(data,),
        )

    async def fail(
        self,
        caller: Caller,
        task_id: str,
        worker_id: str,
        error: str,
        *,
        claim_next: bool = False,
        lease_seconds: int | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Finished:
        authorize(UseCase.FAIL, caller)
        worker_id = check_worker_id(worker_id)
        command = FailTask(task_id=task_id, at=self.clock(), worker_id=worker_id, error=error)

        def build(tx: Any, outcome: Outcome) -> Finished:
            return Finished(task=self._view(tx, outcome))

        parts = (task_id, worker_id, error, claim_next, lease_seconds)
        return await self._finish(
            UseCase.FAIL,
            caller,
            command,
            build,
            parts,
            idempotency_key,
            request_id,
            claim_next,
            lease_seconds,
        )

    async def release(
        self,
        caller: Caller,
        task_id: str,
        worker_id: str,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> TaskView:
        """Give the task back unfinished (re-queued at once, the attempt not used up)."""
        authorize(UseCase.RELEASE, caller)
        worker_id = check_worker_id(worker_id)
        command = ReleaseTask(task_id=task_id, at=self.clock(), worker_id=worker_id)
        return await self._run(
            UseCase.RELEASE,
            caller,
            command,
            TaskView,
            self._view,
            (task_id, worker_id),
            idempotency_key,
            request_id,
        )

    async def read_input(self, caller: Caller, task_id: str) -> Download:
        """The input file (a worker's only while the task is Processing), streamed: its first
        piece is read with the task, the rest as the client takes them."""
        grant = authorize(UseCase.READ_INPUT, caller)
        state, first = await self.reads.run(self._read_input, grant, task_id, self.clock())
        return self._input_download(state, first, OCTET_STREAM)

    def _read_input(self, grant: Grant, task_id: str, at: datetime) -> tuple[TaskState, bytes]:
        state = self.store.state(task_id)
        return self._opened_input(state if state is not None and grant.sees(state, at) else None)

    # -- helpers -----------------------------------------------------------------------------

    async def _finish(
        self,
        use_case: UseCase,
        caller: Caller,
        command: CompleteTask | FailTask,
        build: Callable[[Any, Outcome], Finished],
        parts: Any,
        idempotency_key: str | None,
        request_id: str | None,
        claim_next: bool,
        lease_seconds: int | None,
        *,
        blobs: tuple[bytes, ...] = (),
    ) -> Finished:
        # Checked before the finish runs: a refusal must mean that nothing was done.
        if lease_seconds is not None and not claim_next:
            raise BadRequest(
                "lease_seconds is the lease of the task claimed next: give it with claim_next"
            )
        next_lease = self.lease_for(lease_seconds) if claim_next else 0
        finished, replayed = await self._execute(
            use_case,
            caller,
            command,
            Finished,
            build,
            parts,
            idempotency_key,
            request_id,
            blobs=blobs,
        )
        if not claim_next or replayed:
            # A retry answered from its Idempotency-Key claims nothing: the key covers the
            # finish, not the claim after it.
            return finished
        claimed = await self._claim_next(caller, command.worker_id, next_lease, request_id)
        return msgspec.structs.replace(finished, next=claimed)

    async def _claim_next(
        self, caller: Caller, worker_id: str, seconds: int, request_id: str | None
    ) -> TaskView | None:
        """Claim for a worker that just finished a task, without waiting. The finish has
        committed, so a failure here (the disk, say) does not undo it: the answer says no next
        task and the log line says why; the worker's next plain claim will be told."""
        own: dict[str, Any] = {"request_id": request_id}
        token = log_fields.set(own)
        source = self.store.claim_source(self.claim_maker(worker_id, seconds))
        try:
            return await self._run(
                UseCase.CLAIM, caller, source, TaskView, self._bare, (), None, request_id
            )
        except NothingToDo:
            own["outcome"] = "NothingToDo"
            return None
        except Exception as exc:
            own["outcome"] = type(exc).__name__
            return None
        finally:
            log_fields.reset(token)
            if own.get("task_id") is not None:
                note(next_task_id=own["task_id"])
            note(next_outcome=own.get("outcome"))

    def lease_for(self, asked: int | None) -> int:
        limit = self.settings.max_lease_seconds
        if asked is not None and asked > limit:
            raise BadRequest(f"lease_seconds must be at most {limit}")
        return asked or self.settings.lease_seconds

    def claim_maker(
        self, worker_id: str, seconds: int, gone: asyncio.Future[Any] | None = None
    ) -> Callable[[str], ClaimTask | None]:
        """What the queue's head becomes inside the write transaction: a claim for
        ``worker_id`` leased for ``seconds`` from the moment it is decided; nothing if the
        worker has stopped listening (``gone``) while the claim waited for the writer."""

        def make_claim(task_id: str) -> ClaimTask | None:
            if gone is not None and gone.done():
                return None
            at = self.clock()
            return ClaimTask(
                task_id=task_id,
                at=at,
                worker_id=worker_id,
                lease_until=at + timedelta(seconds=seconds),
            )

        return make_claim

    def queue_has_work(self) -> bool:
        return self.store.views.queue_head() is not None

    def _may_claim(self, key_id: str) -> tuple[bool, bool]:
        """On a reader thread, before a waiting claim tries again: whether the queue holds a
        task, and whether the claim's key is still active."""
        return self.queue_has_work(), is_active(self.store.records, key_id)

    async def wait_for_work(
        self,
        changed: asyncio.Event,
        gone: asyncio.Future[Any] | None,
        deadline: float,
        held: Hold | None = None,
    ) -> bool:
        """Wait until a task may have become claimable (``changed``: set by this process's
        writer at once, and within ``api.live.OTHER_PROCESSES_SECONDS`` for another
        process's), the worker stops listening, its key is found revoked (``held``) or the
        deadline passes; False once the deadline has passed. No timer of its own: a waiting
        claim costs nothing until one of those happens."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(changed.wait())]
        if held is not None:
            waits.append(asyncio.ensure_future(held.revoked.wait()))
        if gone is not None:
            waits.append(gone)
        try:
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                if waiting is not gone:
                    waiting.cancel()
        return True

    # -- the sweepers ------------------------------------------------------------------------

    def _sweep_commands(self, at: datetime) -> list[AnyCommand]:
        views = self.store.views
        leases: list[AnyCommand] = [
            ExpireLease(task_id=task_id, at=at, max_attempts=self.settings.max_attempts)
            for task_id in views.due_leases(at)
        ]
        return [*leases, *(ExpireTask(task_id=t, at=at) for t in views.due_expiries(at))]

    def sweep(self) -> list[tuple[AnyCommand, Outcome | BaseException]]:
        """One pass of the sweepers: expired leases and expired tasks, each a system command
        decided against the task's state in the write transaction (so several processes
        sweeping one database do each job once). Blocking, on the calling thread: the
        sweepers' own (``api.sweeper``), so no read waiting on the read pool and no busy event
        loop can hold them up."""
        commands = self._sweep_commands(self.clock())
        futures = [
            self.writer.submit(Request(command=c, envelope=Envelope(recorded_at=self.clock())))
            for c in commands
        ]
        done: list[tuple[AnyCommand, Outcome | BaseException]] = []
        for command, future in zip(commands, futures, strict=True):
            try:
                # Bounded: a writer stopped at shutdown never answers, and the sweepers' thread
                # must not wait for it forever.
                done.append((command, future.result(timeout=SWEEP_ANSWER_SECONDS)))
            except Exception as exc:
                done.append((command, exc))
        return done
