"""Chunkr's task routes: create, get (with time travel), update, cancel, delete, list.

Each handler is parse -> command -> run -> respond. Writes go through ``Runtime.execute`` (group
commit, idempotency); reads run on the read pool, off the event loop, one indexed row each.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, delete, get, patch, post

from api.call import Call, RawResponse, current, new_task_id
from api.call import respond as respond_with
from api.keys import Caller
from api.openapi import AUTH, READ, WRITE, Query, json_body, query_params, responses
from api.runtime import Forbidden, Reply, Runtime, json_reply, now, text_reply
from api.schemas import (
    DEFAULT_CONFIGURATION,
    BadRequest,
    CreateBody,
    TaskResponse,
    UpdateBody,
    check_file_name,
    decode_body,
    decode_file,
    normalise_fields,
    parse_time,
    render_task,
)
from ledger.commands import CancelTask, CreateTask, DeleteTask, UpdateTask
from ledger.decider import fold, merge_configuration
from ledger.errors import TaskNotFound
from ledger.events import TERMINAL, BlobRef, blob_ref
from ledger.handler import Outcome
from ledger.state import TaskState

MAX_LIST_LIMIT = 1000
#: Past this the offset (page - 1) * limit no longer fits SQLite's 64-bit integers.
MAX_PAGE = 2**31 - 1


def require_role(caller: Caller, *roles: str, action: str) -> None:
    if caller.role not in roles:
        raise Forbidden(f"A {caller.role} key cannot {action}")


def visible(state: TaskState | None, caller: Caller) -> TaskState:
    """The task if this caller may see it; TaskNotFound otherwise (missing, gone, another owner's,
    or expired but not yet swept)."""
    if state is None or not state.live:
        raise TaskNotFound()
    if caller.scope is not None and state.owner != caller.scope:
        raise TaskNotFound()
    if state.status in TERMINAL and state.expires_at is not None and state.expires_at <= now():
        raise TaskNotFound()
    return state


def auditable(state: TaskState | None, caller: Caller) -> TaskState:
    """Admins may audit any task that ever existed (deleted and expired ones included); others
    only the tasks they can see."""
    if caller.role == "admin" and state is not None and state.exists:
        return state
    return visible(state, caller)


def state_as_of(runtime: Runtime, task_id: str, version: int | None, when: datetime | None) -> TaskState:
    """The task as it was after its ``version``-th event, or as it was at ``when``."""
    if version is not None and when is not None:
        raise BadRequest("Give as_of_version or as_of, not both")
    if when is not None and when.tzinfo is None:
        raise BadRequest("as_of must be an RFC 3339 time with a time zone")
    events = runtime.store.history(task_id)
    if version is not None:
        if version > len(events):
            raise BadRequest(f"as_of_version must be between 1 and {len(events)} for this task")
        events = events[:version]
    if when is not None:
        events = [e for e in events if e.recorded_at <= when]
        if not events:
            raise TaskNotFound("Task not found: it did not exist yet at that time")
    return fold(e.event for e in events)


def task_reply(
    runtime: Runtime, base_url: str, written: tuple[BlobRef, dict[str, Any]] | None = None
) -> Callable[[Outcome, Any], Reply]:
    """A ``respond`` for Runtime.execute: the task after the command, as Task JSON (its output
    read inside the transaction, so a just-written output is there). ``written`` is an output
    blob this command wrote and its decoded form, so it need not be read back."""

    def respond(outcome: Outcome, tx: Any) -> Reply:
        state = outcome.after
        if written is not None and state.output == written[0]:
            output: dict[str, Any] | None = written[1]
        else:
            output = runtime.output_of(state, tx)
        rendered = render_task(
            state,
            base_url=base_url,
            output=output,
            include_chunks=True,
        )
        return json_reply(rendered)

    return respond


async def run_on_visible_task(
    call: Call,
    caller: Caller,
    command: UpdateTask | CancelTask | DeleteTask,
    respond: Callable[[Outcome, Any], Reply],
    *,
    body: bytes = b"",
) -> RawResponse:
    """Run a user's command on one task, hiding tasks this caller may not see (including
    expired ones the sweeper has not reached: that rule needs the clock the decider never reads).
    The check runs after any idempotent replay, so a retried delete gets its original answer."""
    runtime = call.runtime
    reply = await runtime.execute(
        call,
        caller,
        command,
        respond,
        body=body,
        precheck=lambda: visible(runtime.store.state(command.task_id), caller),
    )
    return respond_with(reply)


def query_bool(call: Call, name: str, default: bool) -> bool:
    value = call.query.get(name)
    if value is None:
        return default
    try:
        return msgspec.convert(value, bool, strict=False)
    except msgspec.ValidationError:
        raise BadRequest(f"Invalid request: {name}: expected true or false, not {value!r}") from None


def query_version(call: Call) -> int | None:
    value = call.query.get("as_of_version")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18 or int(value) < 1:
        raise BadRequest("Invalid request: as_of_version: must be a whole number, 1 or more")
    return int(value)


def read_task(
    runtime: Runtime,
    caller: Caller,
    task_id: str,
    base_url: str,
    include_chunks: bool,
    version: int | None,
    as_of: str | None,
) -> Reply:
    """GET /task/{id}, run on a reader thread: the task now, or as it was (time travel)."""
    if version is None and as_of is None:
        state = visible(runtime.store.state(task_id), caller)
    else:
        auditable(runtime.store.state(task_id), caller)
        state = state_as_of(runtime, task_id, version, parse_time("as_of", as_of))
    output = runtime.output_of(state) if state.output is not None else None
    return json_reply(
        render_task(state, base_url=base_url, output=output, include_chunks=include_chunks)
    )


GET_TASK_QUERY = (
    Query("include_chunks", {"type": "boolean", "default": True}, "Include the output's chunks"),
    Query("base64_urls", {"type": "boolean", "default": False}, "Accepted for Chunkr compatibility"),
    Query(
        "as_of_version",
        {"type": "integer", "minimum": 1},
        "The task as it was after its N-th event (time travel)",
    ),
    Query("as_of", {"type": "string", "format": "date-time"}, "The task as it was at this time"),
)


class TaskController(Controller):
    """The handlers take no parameters: they read the request from ``api.call`` (see there)."""

    path = "/api/v1/task"
    tags = ["tasks"]

    @post(
        "/parse",
        status_code=200,
        summary="Create a task",
        operation_class=json_body(CreateBody),
        responses=responses(400, *AUTH, 403, 413, 422, 503, ok=TaskResponse),
    )
    async def create_task(self) -> RawResponse:
        call = current()
        caller = call.caller()
        runtime = call.runtime
        require_role(caller, "user", "admin", action="create tasks")
        raw = await call.body()
        body: CreateBody = decode_body(raw, CreateBody)
        data = decode_file(body.file)
        file_name = check_file_name(body.file_name)
        fields = normalise_fields(body.as_dict())
        del fields["file"]
        fields.pop("file_name", None)
        defaults = {**DEFAULT_CONFIGURATION, "expires_in": runtime.settings.default_expires_in}
        configuration = merge_configuration(defaults, fields)
        command = CreateTask(
            task_id=new_task_id(),
            at=now(),
            owner=caller.owner,
            configuration=configuration,
            file=blob_ref(data),
            file_name=file_name,
            expires_in=configuration.get("expires_in"),
        )
        reply = await runtime.execute(
            call,
            caller,
            command,
            task_reply(runtime, call.base_url()),
            blobs=[data],
            body=raw,
        )
        return respond_with(reply)

    @get(
        "/{task_id:str}",
        summary="Get a task",
        operation_class=query_params(*GET_TASK_QUERY),
        responses=responses(*READ, ok=TaskResponse),
    )
    async def get_task(self) -> RawResponse:
        call = current()
        caller = call.caller()
        include_chunks = query_bool(call, "include_chunks", True)
        query_bool(call, "base64_urls", False)  # accepted (and checked) for Chunkr's clients
        reply = await call.runtime.reads.run(
            read_task,
            call.runtime,
            caller,
            call.path_param("task_id"),
            call.base_url(),
            include_chunks,
            query_version(call),
            call.query.get("as_of"),
        )
        return respond_with(reply)

    @patch(
        "/{task_id:str}/parse",
        status_code=200,
        summary="Update a task's configuration",
        operation_class=json_body(UpdateBody, required=False),
        responses=responses(*WRITE, 413, ok=TaskResponse),
    )
    async def update_task(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "user", "admin", action="update tasks")
        raw = await call.body()
        body: UpdateBody = decode_body(raw or b"{}", UpdateBody)
        command = UpdateTask(
            task_id=call.path_param("task_id"),
            at=now(),
            owner=caller.scope,
            configuration=normalise_fields(body.as_dict()),
        )
        return await run_on_visible_task(
            call, caller, command, task_reply(call.runtime, call.base_url()), body=raw
        )

    @get(
        "/{task_id:str}/cancel",
        summary="Cancel a task that has not started",
        responses=responses(*WRITE, ok_text="Task cancelled"),
    )
    async def cancel_task(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "user", "admin", action="cancel tasks")
        command = CancelTask(task_id=call.path_param("task_id"), at=now(), owner=caller.scope)
        return await run_on_visible_task(
            call, caller, command, lambda outcome, tx: text_reply("Task cancelled")
        )

    @delete(
        "/{task_id:str}",
        status_code=200,
        summary="Delete a finished task",
        responses=responses(*WRITE, ok_text="Task deleted"),
    )
    async def delete_task(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "user", "admin", action="delete tasks")
        command = DeleteTask(task_id=call.path_param("task_id"), at=now(), owner=caller.scope)
        return await run_on_visible_task(
            call, caller, command, lambda outcome, tx: text_reply("Task deleted")
        )


def query_int(call: Call, name: str) -> int | None:
    value = call.query.get(name)
    if value is None:
        return None
    digits = value[1:] if value[:1] in "+-" else value
    if not digits.isdigit() or len(digits) > 18:
        raise BadRequest(f"Invalid request: {name}: expected a whole number, not {value!r}")
    return int(value)


def list_page(
    runtime: Runtime,
    caller: Caller,
    base_url: str,
    limit: int | None,
    offset: int,
    start: datetime | None,
    end: datetime | None,
    include_chunks: bool,
) -> Reply:
    """GET /tasks, run on a reader thread: one keyset-indexed page of the caller's tasks."""
    reader = runtime.store.log.reader()
    states = runtime.store.tasks.list(
        reader, owner=caller.scope, now=now(), limit=limit, offset=offset, start=start, end=end
    )
    return json_reply(
        [
            render_task(
                s,
                base_url=base_url,
                output=runtime.output_of(s, reader),
                include_chunks=include_chunks,
            )
            for s in states
        ]
    )


LIST_QUERY = (
    Query("page", {"type": "integer", "minimum": 1}, "Page number (needs limit)"),
    Query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
        "Tasks per page",
    ),
    Query("start", {"type": "string", "format": "date-time"}, "Created at or after this time"),
    Query("end", {"type": "string", "format": "date-time"}, "Created before this time"),
    Query("include_chunks", {"type": "boolean", "default": False}, "Include outputs' chunks"),
    Query("base64_urls", {"type": "boolean", "default": False}, "Accepted for Chunkr compatibility"),
)


class TasksController(Controller):
    path = "/api/v1/tasks"
    tags = ["tasks"]

    @get(
        "/",
        summary="List tasks, newest first",
        operation_class=query_params(*LIST_QUERY),
        responses=responses(400, *AUTH, 403, ok=list[TaskResponse]),
    )
    async def list_tasks(self) -> RawResponse:
        call = current()
        caller = call.caller()
        require_role(caller, "user", "admin", action="list tasks")
        page, limit = query_int(call, "page"), query_int(call, "limit")
        include_chunks = query_bool(call, "include_chunks", False)
        query_bool(call, "base64_urls", False)  # accepted (and checked) for Chunkr's clients
        if page is not None and limit is None:
            raise BadRequest("Limit is required when page is provided")
        if page is not None and page < 1:
            raise BadRequest("page must be 1 or more")
        if page is not None and page > MAX_PAGE:
            raise BadRequest(f"page must be at most {MAX_PAGE}")
        if limit is not None and not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        start_at = parse_time("start", call.query.get("start"))
        end_at = parse_time("end", call.query.get("end"))
        offset = (page - 1) * limit if page is not None and limit is not None else 0
        reply = await call.runtime.reads.run(
            list_page, call.runtime, caller, call.base_url(), limit, offset, start_at, end_at,
            include_chunks,
        )
        return respond_with(reply)
