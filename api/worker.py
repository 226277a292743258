"""Worker routes: claim (with a long poll), heartbeat, complete, fail, release, the input file.

Only the worker holding a task's current lease may heartbeat, complete, fail or release it; any
other gets 409 and nothing is appended. Claims hand out the oldest claimable task first.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody
from litestar.response.base import ASGIResponse

from api.auth import guard, linker, request_id
from api.openapi import READ, WRITE, responses
from api.policy import UseCase
from api.schemas import (
    ClaimBody,
    ClaimedTaskResponse,
    CompleteBody,
    FailBody,
    FinishedTaskResponse,
    HeartbeatBody,
    LeaseResponse,
    ReleaseBody,
    TaskResponse,
    render_claimed,
    render_finished,
    render_lease,
    render_view,
)
from api.streaming import Streamed
from api.tasks import HttpRequest, IdempotencyKey, Service
from ledger.handler import NothingToDo

FINISH = responses(*WRITE, 409, 413)


def watch_disconnect(request: HttpRequest) -> asyncio.Future[None]:
    """A future that is done once the client hangs up (its body has been read already, so the
    next ASGI message can only be ``http.disconnect``)."""

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return asyncio.ensure_future(wait_for_disconnect())


def content_disposition(name: str) -> str:
    """An attachment header for any file name: an ASCII fallback plus the exact name in
    RFC 5987 form, so non-Latin names survive and nothing can break out of the header."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class WorkerController(Controller):
    path = "/api/v1"
    tags = ["workers"]

    @post(
        "/worker/claim",
        status_code=200,
        summary="Claim the oldest claimable task",
        guards=[guard(UseCase.CLAIM)],
        responses=responses(204, 400, 401, 403, 413, 422, 429, 503),
    )
    async def claim(
        self,
        request: HttpRequest,
        service: Service,
        data: JSONBody[ClaimBody],
        idempotency_key: IdempotencyKey = None,
    ) -> ClaimedTaskResponse:
        gone = watch_disconnect(request) if data.wait_seconds > 0 else None
        try:
            if gone is not None:
                # Let the watcher see a hang-up that happened before this handler ran.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            view = await service.claim(
                request.user,
                data.worker_id,
                lease_seconds=data.lease_seconds,
                wait_seconds=data.wait_seconds,
                gone=gone,
                idempotency_key=idempotency_key,
                request_id=request_id(request),
            )
        finally:
            if gone is not None:
                gone.cancel()
        if view is None:
            raise NothingToDo()  # 204, by the error table
        return render_claimed(view, linker(request))

    @post(
        "/task/{task_id:str}/heartbeat",
        status_code=200,
        summary="Extend a lease",
        guards=[guard(UseCase.HEARTBEAT)],
        responses=FINISH,
    )
    async def heartbeat(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        data: JSONBody[HeartbeatBody],
        idempotency_key: IdempotencyKey = None,
    ) -> LeaseResponse:
        view = await service.heartbeat(
            request.user,
            task_id,
            data.worker_id,
            lease_seconds=data.lease_seconds,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_lease(view.state)

    @post(
        "/task/{task_id:str}/complete",
        status_code=200,
        summary="Finish a task: Succeeded",
        guards=[guard(UseCase.COMPLETE)],
        responses=FINISH,
    )
    async def complete(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        data: JSONBody[CompleteBody],
        idempotency_key: IdempotencyKey = None,
    ) -> FinishedTaskResponse:
        finished = await service.complete(
            request.user,
            task_id,
            data.worker_id,
            data.output,
            claim_next=data.claim_next,
            lease_seconds=data.lease_seconds,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_finished(finished, linker(request))

    @post(
        "/task/{task_id:str}/fail",
        status_code=200,
        summary="Finish a task: Failed",
        guards=[guard(UseCase.FAIL)],
        responses=FINISH,
    )
    async def fail(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        data: JSONBody[FailBody],
        idempotency_key: IdempotencyKey = None,
    ) -> FinishedTaskResponse:
        finished = await service.fail(
            request.user,
            task_id,
            data.worker_id,
            data.error,
            claim_next=data.claim_next,
            lease_seconds=data.lease_seconds,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_finished(finished, linker(request))

    @post(
        "/task/{task_id:str}/release",
        status_code=200,
        summary="Give a task back unfinished",
        guards=[guard(UseCase.RELEASE)],
        responses=FINISH,
    )
    async def release(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        data: JSONBody[ReleaseBody],
        idempotency_key: IdempotencyKey = None,
    ) -> TaskResponse:
        view = await service.release(
            request.user,
            task_id,
            data.worker_id,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_view(view, linker(request))

    @get(
        "/task/{task_id:str}/input",
        summary="The task's input file",
        media_type="application/octet-stream",
        guards=[guard(UseCase.READ_INPUT)],
        responses=responses(*READ),
    )
    async def input_file(
        self, request: HttpRequest, service: Service, task_id: FromPath[str]
    ) -> ASGIResponse:
        download = await service.read_input(request.user, task_id)
        return Streamed(
            download.pieces,
            size=download.size,
            media_type=download.media_type,
            headers={"Content-Disposition": content_disposition(download.name)},
        )
