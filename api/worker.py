"""Worker routes: claim (with long poll), heartbeat, complete, fail, release, and the input file.

Only the worker holding a task's current lease may heartbeat, complete, fail or release it; any
other gets 409 and nothing is appended. Claims hand out the oldest claimable task first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Controller, get, post

from api.call import Call, RawResponse, current, respond
from api.keys import Caller
from api.openapi import READ, WRITE, json_body, responses
from api.runtime import Reply, Runtime, json_reply, now
from api.schemas import (
    BadRequest,
    ClaimBody,
    ClaimedTaskResponse,
    CompleteBody,
    FailBody,
    FinishedTaskResponse,
    HeartbeatBody,
    LeaseResponse,
    ReleaseBody,
    TaskResponse,
    check_output,
    decode_body,
    render_task,
)
from api.tasks import require_role, task_reply, visible
from ledger.commands import ClaimTask, CompleteTask, ExtendLease, FailTask, ReleaseTask
from ledger.errors import TaskNotFound
from ledger.events import PROCESSING, BlobRef, blob_ref
from ledger.handler import NothingToDo, Outcome
from ledger.state import TaskState


async def finish(
    call: Call,
    caller: Caller,
    command: CompleteTask | FailTask | ReleaseTask,
    raw: bytes,
    *,
    blobs: list[bytes] | None = None,
    written: tuple[BlobRef, dict[str, Any]] | None = None,
    claim_next: bool = False,
    lease: int | None = None,
) -> RawResponse:
    """Run a lease holder's finishing command and answer the task as it is afterwards; with
    ``claim_next``, then claim the oldest claimable task for the same worker and add it to the
    answer as ``next`` (null when the queue is empty)."""
    runtime = call.runtime
    # Checked before the finish runs: a 400 must mean that nothing was done.
    if lease is not None and not claim_next:
        raise BadRequest(
            "lease_seconds is the lease of the task claimed next: give it with claim_next"
        )
    next_lease = lease_seconds(runtime, lease) if claim_next else 0
    reply = await runtime.execute(
        call, caller, command, task_reply(runtime, call.base_url(), written=written),
        blobs=blobs or (), body=raw,
    )
    if not claim_next or call.fields.get("outcome") == "replayed":
        # A retry answered from its Idempotency-Key gets the finish's stored answer and claims
        # nothing: the key covers the finish, not the claim after it (a task the first attempt
        # claimed stays leased to the worker until its lease runs out, as after a lost claim).
        return respond(reply)
    claimed = await claim_for_next(call, caller, command.worker_id, next_lease)
    return respond(with_next(reply, claimed))


async def claim_for_next(call: Call, caller: Caller, worker_id: str, seconds: int) -> bytes:
    """Claim for a worker that just finished a task, without waiting: the claimed task's JSON,
    or ``null``. The finishing command has committed by now, so a failure here (the disk, say)
    does not undo it: the answer says ``next: null`` and the log line says why; the worker's
    next plain claim will meet the same trouble and be told."""
    runtime = call.runtime
    fields: dict[str, Any] = {}
    try:
        reply = await runtime.execute(
            call, caller, runtime.store.claim_source(claim_maker(worker_id, seconds)),
            claimed_reply(call.base_url()), fields=fields, idempotent=False,
        )
    except NothingToDo:
        call.fields["next_outcome"] = "NothingToDo"
        return b"null"
    except Exception as exc:  # noqa: BLE001 - the finish stands; see the docstring
        call.fields["next_outcome"] = type(exc).__name__
        return b"null"
    call.fields["next_task_id"] = fields.get("task_id")
    call.fields["next_outcome"] = fields.get("outcome")
    return reply.body


def with_next(reply: Reply, claimed: bytes) -> Reply:
    """The finished task's JSON object with ``"next": <claimed>`` added as its last member."""
    body = reply.body
    if reply.status_code != 200 or not body.endswith(b"}"):
        return reply
    return Reply(reply.status_code, reply.media_type, body[:-1] + b',"next":' + claimed + b"}")


def claim_maker(
    worker_id: str, seconds: int, gone: asyncio.Task[None] | None = None
) -> Callable[[str], ClaimTask | None]:
    """What the queue's head becomes inside the write transaction: a claim for ``worker_id``
    leased for ``seconds`` from the moment it is decided; nothing if the worker has hung up
    (``gone``) while the claim waited in the writer's queue."""

    def make_claim(task_id: str) -> ClaimTask | None:
        if gone is not None and gone.done():
            return None
        at = now()
        return ClaimTask(
            task_id=task_id,
            at=at,
            worker_id=worker_id,
            lease_until=at + timedelta(seconds=seconds),
        )

    return make_claim


def claimed_reply(base_url: str) -> Callable[[Outcome, Any], Reply]:
    def respond_claimed(outcome: Outcome, tx: Any) -> Reply:
        state = outcome.after
        task = render_task(state, base_url=base_url, output=None, include_chunks=False)
        claimed = ClaimedTaskResponse(
            **msgspec.structs.asdict(task),
            lease_until=state.lease_until,
            attempt=state.attempt,
            worker_id=state.worker_id,
        )
        return json_reply(claimed)

    return respond_claimed


def queue_has_work(runtime: Runtime) -> bool:
    return runtime.store.queue.head(runtime.store.log.reader()) is not None


def watch_disconnect(call: Call) -> asyncio.Task[None]:
    """A task that finishes when the client hangs up (its body has been read already, so the
    next ASGI message can only be ``http.disconnect``)."""

    async def wait_for_disconnect() -> None:
        while True:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                return

    return asyncio.ensure_future(wait_for_disconnect())


def content_disposition(name: str) -> str:
    """An attachment header for any file name: an ASCII fallback plus the exact name in
    RFC 5987 form, so non-Latin names survive and nothing can break out of the header."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def lease_seconds(runtime: Runtime, asked: int | None) -> int:
    limit = runtime.settings.max_lease_seconds
    if asked is not None and asked > limit:
        raise BadRequest(f"lease_seconds must be at most {limit}")
    return asked or runtime.settings.lease_seconds


def no_content() -> RawResponse:
    return RawResponse(b"", 204)


def lease_reply(state: TaskState) -> Reply:
    assert state.worker_id is not None and state.lease_until is not None
    return json_reply(
        LeaseResponse(
            task_id=state.task_id,
            worker_id=state.worker_id,
            lease_until=state.lease_until,
            attempt=state.attempt,
        )
    )


class WorkerController(Controller):
    path = "/api/v1"
    tags = ["workers"]

    @post(
        "/worker/claim",
        status_code=200,
        summary="Claim the oldest claimable task",
        operation_class=json_body(ClaimBody),
        responses=responses(204, 400, 401, 403, 413, 422, 429, 503, ok=ClaimedTaskResponse),
    )
    async def claim(self) -> RawResponse:
        call = current()
        caller = call.caller()
        runtime = call.runtime
        require_role(caller, "worker", "admin", action="claim tasks")
        body: ClaimBody = decode_body(await call.body(), ClaimBody)
        base_url = call.base_url()
        seconds = lease_seconds(runtime, body.lease_seconds)
        wait = min(body.wait_seconds, runtime.settings.max_wait_seconds)
        deadline = time.monotonic() + wait
        gone = watch_disconnect(call) if wait > 0 else None
        make_claim = claim_maker(body.worker_id, seconds, gone)
        respond_claimed = claimed_reply(base_url)
        if gone is not None:
            # Let the watcher see a hang-up that happened before this handler ran (a busy server
            # may read a request whose client has already given up).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        first = True
        try:
            while True:
                changed = runtime.queue_changed
                if gone is not None and gone.done():
                    # The worker hung up: never claim for a worker that is no longer listening.
                    return no_content()
                try:
                    if not first and not await runtime.reads.run(queue_has_work, runtime):
                        # An empty queue seen on a read connection: no write transaction needed.
                        raise NothingToDo()
                    first = False
                    reply = await runtime.execute(
                        call, caller, runtime.store.claim_source(make_claim), respond_claimed
                    )
                    return respond(reply)
                except NothingToDo:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return no_content()
                    # Woken at once by a task queued in this process (or by the worker hanging
                    # up); other processes' tasks are seen by polling.
                    waits = [asyncio.ensure_future(changed.wait())]
                    if gone is not None:
                        waits.append(gone)
                    await asyncio.wait(waits, timeout=min(remaining, 0.25), return_when=asyncio.FIRST_COMPLETED)
                    waits[0].cancel()
        finally:
            if gone is not None:
                gone.cancel()

    @post(
        "/task/{task_id:str}/heartbeat",
        status_code=200,
        summary="Extend a lease",
        operation_class=json_body(HeartbeatBody),
        responses=responses(*WRITE, 409, 413, ok=LeaseResponse),
    )
    async def heartbeat(self) -> RawResponse:
        call = current()
        caller = call.caller()
        runtime = call.runtime
        require_role(caller, "worker", "admin", action="heartbeat tasks")
        body: HeartbeatBody = decode_body(await call.body(), HeartbeatBody)
        at = now()
        command = ExtendLease(
            task_id=call.path_param("task_id"),
            at=at,
            worker_id=body.worker_id,
            lease_until=at + timedelta(seconds=lease_seconds(runtime, body.lease_seconds)),
        )
        reply = await runtime.execute(
            call, caller, command, lambda outcome, tx: lease_reply(outcome.after)
        )
        return respond(reply)

    @post(
        "/task/{task_id:str}/complete",
        status_code=200,
        summary="Finish a task: Succeeded",
        operation_class=json_body(CompleteBody),
        responses=responses(*WRITE, 409, 413, ok=FinishedTaskResponse),
    )
    async def complete(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "worker", "admin", action="complete tasks")
        raw = await call.body()
        body: CompleteBody = decode_body(raw, CompleteBody)
        task_id = call.path_param("task_id")
        runtime = call.runtime
        state = await runtime.reads.run(runtime.store.state, task_id)
        if state is None or not state.live:
            raise TaskNotFound()
        output = check_output(body.output, state.file_name)
        data = msgspec.json.encode(output)
        ref = blob_ref(data)
        command = CompleteTask(task_id=task_id, at=now(), worker_id=body.worker_id, output=ref)
        return await finish(
            call, caller, command, raw, blobs=[data], written=(ref, output),
            claim_next=body.claim_next, lease=body.lease_seconds,
        )

    @post(
        "/task/{task_id:str}/fail",
        status_code=200,
        summary="Finish a task: Failed",
        operation_class=json_body(FailBody),
        responses=responses(*WRITE, 409, 413, ok=FinishedTaskResponse),
    )
    async def fail(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "worker", "admin", action="fail tasks")
        raw = await call.body()
        body: FailBody = decode_body(raw, FailBody)
        command = FailTask(
            task_id=call.path_param("task_id"), at=now(), worker_id=body.worker_id, error=body.error
        )
        return await finish(
            call, caller, command, raw, claim_next=body.claim_next, lease=body.lease_seconds
        )

    @post(
        "/task/{task_id:str}/release",
        status_code=200,
        summary="Give a task back unfinished",
        operation_class=json_body(ReleaseBody),
        responses=responses(*WRITE, 409, 413, ok=TaskResponse),
    )
    async def release(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "worker", "admin", action="release tasks")
        raw = await call.body()
        body: ReleaseBody = decode_body(raw, ReleaseBody)
        command = ReleaseTask(
            task_id=call.path_param("task_id"), at=now(), worker_id=body.worker_id
        )
        return await finish(call, caller, command, raw)

    @get(
        "/task/{task_id:str}/input",
        summary="The task's input file",
        media_type="application/octet-stream",
        responses=responses(*READ),
    )
    async def input_file(self) -> RawResponse:
        call = current()
        caller = call.caller()
        name, data = await call.runtime.reads.run(
            read_input, call.runtime, caller, call.path_param("task_id")
        )
        return RawResponse(
            data, 200, "application/octet-stream", {"Content-Disposition": content_disposition(name)}
        )


def read_input(runtime: Runtime, caller: Caller, task_id: str) -> tuple[str, bytes]:
    """The input file's name and bytes, for the caller; TaskNotFound if it may not have them."""
    state = visible(runtime.store.state(task_id), caller)
    if caller.role == "worker" and state.status != PROCESSING:
        # A worker reads the input of a task it has claimed, not of queued or finished ones.
        raise TaskNotFound()
    data = runtime.store.log.get_blob(state.file) if state.file else None
    if data is None:
        raise TaskNotFound()
    return state.file_name or "input", data
