"""Chunkr's task routes: create, get (with time travel), update, cancel, delete, list.

Each handler takes typed parameters and a body Struct, calls one service method and renders
what it returns; who may call it is the guard's (from ``api.policy``), everything else the
service's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import (
    Controller,
    Request,
    delete,
    get,
    patch,
    post,
)
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Empty, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from api.auth import guard, linker, request_id
from api.openapi import AUTH, READ, WRITE, json_reply, responses
from api.policy import Caller, UseCase
from api.refusals import BadRequest, Busy
from api.schemas import (
    CreateBody,
    TaskResponse,
    UpdateBody,
    configuration_sent,
    decode_file,
    encode,
    ignored_fields,
    render_view,
)
from api.service import MAX_LIST_LIMIT, TaskLedger
from api.streaming import json_array, json_body

Service = NamedDependency[TaskLedger]
HttpRequest = Request[Caller, None, State]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key", description="Retry safely: the first outcome is replayed"
    ),
]
Base64Urls = Annotated[
    bool,
    QueryParameter(
        description="Answer input_file_url and pdf_url as data: URLs holding the file (base64) "
        "instead of signed links"
    ),
]


#: A create whose body is this large or larger, or of no stated size, is a large create: at
#: most ``Settings.max_large_creates`` of them run at once in a process.
LARGE_CREATE = 1024 * 1024


def limit_large_creates(app: ASGIApp) -> ASGIApp:
    """The create route's middleware (one per app): a large create past
    ``Settings.max_large_creates`` is refused with 503 and Retry-After before its body is kept
    (each holds about twice its body at its peak). The refused body is read and dropped first,
    so that the client, still sending it, gets the answer."""
    in_flight = 0

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal in_flight
        settings = scope["litestar_app"].state.service.settings
        limit = settings.max_large_creates
        if limit <= 0 or not _large_body(scope):
            await app(scope, receive, send)
            return
        if in_flight >= limit:
            await _drop_body(receive, settings.max_body_bytes)
            raise Busy(f"Too many large creates at once ({limit}); retry shortly")
        in_flight += 1
        try:
            await app(scope, receive, send)
        finally:
            in_flight -= 1

    return middleware


def _large_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return not value.isdigit() or int(value) >= LARGE_CREATE
    return True


async def _drop_body(receive: Receive, most: int) -> None:
    """Read and drop a request's body (at most ``most`` bytes of it)."""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def forget_body(request: HttpRequest) -> None:
    """Drop the raw body Litestar keeps for the rest of the request (on the request and in the
    scope's state) once the handler has all it needs from it."""
    ScopeState.from_scope(request.scope).body = Empty
    request._body = Empty


class TaskController(Controller):
    path = "/api/v1/task"
    tags = ["tasks"]

    @post(
        "/parse",
        status_code=200,
        summary="Create a task",
        guards=[guard(UseCase.CREATE)],
        responses=responses(400, *AUTH, 403, 413, 422, 503),
        middleware=[limit_large_creates],
    )
    async def create_task(
        self,
        request: HttpRequest,
        service: Service,
        data: JSONBody[CreateBody],
        idempotency_key: IdempotencyKey = None,
    ) -> TaskResponse:
        ignored = ignored_fields(await request.body(), CreateBody)
        # A large file is in memory as the raw body, its base64 text and its bytes: let each go
        # as soon as it is done with (nothing else holds them), so that one create holds about
        # two copies of the file at its peak, not four (BENCHMARKS.md).
        forget_body(request)
        file = decode_file(data.file)
        data.file = ""
        view = await service.create(
            request.user,
            file=file,
            file_name=data.file_name,
            configuration=configuration_sent(data),
            ignored_fields=ignored,
            webhook_url=data.webhook_url,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_view(view, linker(request))

    @get(
        "/{task_id:str}",
        summary="Get a task (now, or as it was: as_of_version or as_of)",
        guards=[guard(UseCase.GET)],
        responses={200: json_reply(TaskResponse), **responses(*READ)},
    )
    async def get_task(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        include_chunks: Annotated[
            bool, QueryParameter(description="Include the output's chunks")
        ] = True,
        base64_urls: Base64Urls = False,
        as_of_version: Annotated[
            int | None, QueryParameter(ge=1, description="The task as it was after its N-th event")
        ] = None,
        as_of: Annotated[
            datetime | None, QueryParameter(description="The task as it was at this time")
        ] = None,
    ) -> ASGIResponse:
        # A raw reply: the Task JSON is rendered and encoded on the reader thread, not by
        # Litestar on the event loop (BENCHMARKS.md: the route's busiest cost).
        links = linker(request, base64_urls=base64_urls)
        body = await service.get_as(
            request.user,
            task_id,
            lambda view: encode(render_view(view, links, include_chunks)),
            as_of_version=as_of_version,
            as_of=as_of,
            include_chunks=include_chunks,
        )
        return json_body(body)

    @patch(
        "/{task_id:str}/parse",
        status_code=200,
        summary="Update a task's configuration",
        guards=[guard(UseCase.UPDATE)],
        responses=responses(*WRITE, 413),
    )
    async def update_task(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        data: JSONBody[UpdateBody | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> TaskResponse:
        if data is None:
            raise BadRequest(
                "Request body is empty; expected a JSON object with the configuration fields "
                "to change"
            )
        view = await service.update(
            request.user,
            task_id,
            configuration_sent(data),
            ignored_fields=ignored_fields(await request.body(), UpdateBody),
            webhook_url=data.webhook_url,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_view(view, linker(request))

    @get(
        "/{task_id:str}/cancel",
        summary="Cancel a task that has not started",
        media_type="text/plain",
        guards=[guard(UseCase.CANCEL)],
        responses=responses(*WRITE),
    )
    async def cancel_task(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        idempotency_key: IdempotencyKey = None,
    ) -> str:
        await service.cancel(
            request.user, task_id, idempotency_key=idempotency_key, request_id=request_id(request)
        )
        return "Task cancelled"

    @delete(
        "/{task_id:str}",
        status_code=200,
        summary="Delete a finished task",
        media_type="text/plain",
        guards=[guard(UseCase.DELETE)],
        responses=responses(*WRITE),
    )
    async def delete_task(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        idempotency_key: IdempotencyKey = None,
    ) -> str:
        await service.delete(
            request.user, task_id, idempotency_key=idempotency_key, request_id=request_id(request)
        )
        return "Task deleted"


class TasksController(Controller):
    path = "/api/v1/tasks"
    tags = ["tasks"]

    @get(
        "/",
        summary="List tasks, newest first",
        guards=[guard(UseCase.LIST)],
        responses={200: json_reply(list[TaskResponse]), **responses(400, *AUTH, 403)},
    )
    async def list_tasks(
        self,
        request: HttpRequest,
        service: Service,
        page: Annotated[
            int | None,
            QueryParameter(description="Page number (needs limit)", schema_extra={"minimum": 1}),
        ] = None,
        limit: Annotated[
            int | None,
            QueryParameter(
                description="Tasks per page",
                schema_extra={"minimum": 1, "maximum": MAX_LIST_LIMIT},
            ),
        ] = None,
        start: Annotated[datetime | None, QueryParameter(description="Created at or after")] = None,
        end: Annotated[datetime | None, QueryParameter(description="Created at or before")] = None,
        include_chunks: Annotated[
            bool, QueryParameter(description="Include outputs' chunks")
        ] = False,
        base64_urls: Base64Urls = False,
    ) -> ASGIResponse:
        # A raw reply, as GET's: each task rendered and encoded on the reader thread that read
        # it (its output let go of then), and a large answer sent in pieces (api.streaming).
        links = linker(request, base64_urls=base64_urls)
        parts = await service.list_as(
            request.user,
            lambda view: encode(render_view(view, links, include_chunks)),
            page=page,
            limit=limit,
            start=start,
            end=end,
            include_chunks=include_chunks,
            inline_inputs=base64_urls,
        )
        return json_array(parts)
