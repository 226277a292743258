"""History and the live feed: a task's events, the global feed with a cursor, and the same feed
as Server-Sent Events. Users see their own tasks; admins see everything, deleted and expired
tasks included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.keys import Caller
from api.openapi import AUTH, READ, responses
from api.runtime import Forbidden, Runtime, json_reply
from api.schemas import BadRequest
from api.tasks import auditable
from ledger.events import EVENT_TAGS
from ledger.log import RecordedEvent
from projections import feed

MAX_FEED_LIMIT = 1000
#: The largest position SQLite can hold (a 64-bit integer).
MAX_POSITION = 2**63 - 1


class ActorJSON(msgspec.Struct, kw_only=True):
    key_id: str | None
    role: str


class EventJSON(msgspec.Struct, kw_only=True):
    position: int
    task_id: str
    version: int
    type: str
    recorded_at: datetime
    actor: ActorJSON
    request_id: str | None
    idempotency_key: str | None
    hash: str
    data: dict[str, Any]


class FeedPage(msgspec.Struct, kw_only=True):
    events: list[EventJSON]
    #: Pass as ``after`` to get the next page (the last position seen, or ``after`` if none).
    next_after: int


def event_json(recorded: RecordedEvent) -> EventJSON:
    data = msgspec.to_builtins(recorded.event)
    kind = data.pop("type")
    return EventJSON(
        position=recorded.position,
        task_id=recorded.event.task_id,
        version=recorded.version,
        type=kind,
        recorded_at=recorded.recorded_at,
        actor=ActorJSON(key_id=recorded.actor.key_id, role=recorded.actor.role),
        request_id=recorded.request_id,
        idempotency_key=recorded.idempotency_key,
        hash=recorded.hash,
        data=data,
    )


def check_types(types: list[str] | None) -> list[str]:
    unknown = sorted(set(types or ()) - set(EVENT_TAGS))
    if unknown:
        raise BadRequest(f"Unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TAGS)}")
    return types or []


def feed_scope(caller: Caller) -> str | None:
    return None if caller.role == "admin" else caller.owner


class AuditController(Controller):
    path = "/api/v1"
    tags = ["audit"]

    @get(
        "/task/{task_id:str}/events",
        summary="A task's history, oldest first",
        sync_to_thread=True,
        responses=responses(*READ),
    )
    def task_events(self, caller: Caller, runtime: Runtime, task_id: str) -> Response[list[EventJSON]]:
        auditable(runtime.store.state(task_id), caller)
        events = runtime.store.history(task_id)
        return json_reply([event_json(e) for e in events]).to_response()

    @get(
        "/events",
        summary="The global event feed, in position order",
        sync_to_thread=True,
        responses=responses(400, *AUTH, 403),
    )
    def events(
        self,
        caller: Caller,
        runtime: Runtime,
        after: Annotated[int, Parameter(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=MAX_FEED_LIMIT)] = 100,
        type: list[str] | None = None,
        task_id: str | None = None,
    ) -> Response[FeedPage]:
        if caller.role == "worker":
            raise Forbidden("A worker key cannot read the event feed")
        found = feed.page(
            runtime.store.log.reader(),
            after=after,
            limit=limit,
            owner=feed_scope(caller),
            types=check_types(type),
            task_id=task_id,
        )
        next_after = found[-1].position if found else after
        return json_reply(FeedPage(events=[event_json(e) for e in found], next_after=next_after)).to_response()

    @get(
        "/events/stream",
        summary="The event feed, live, as Server-Sent Events",
        media_type="text/event-stream",
        responses=responses(400, *AUTH, 403),
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        caller: Caller,
        runtime: Runtime,
        after: Annotated[int, Parameter(ge=0, le=MAX_POSITION)] = 0,
        type: list[str] | None = None,
        task_id: str | None = None,
    ) -> ServerSentEvent:
        if caller.role == "worker":
            raise Forbidden("A worker key cannot read the event feed")
        types = check_types(type)
        last_id = request.headers.get("last-event-id")
        if last_id is not None:
            last_id = last_id.strip()
            digits = last_id.isascii() and last_id.isdigit() and len(last_id) <= 19
            if not (digits and int(last_id) <= MAX_POSITION):
                raise BadRequest("Last-Event-ID must be an event position")
            after = int(last_id)
        owner = feed_scope(caller)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            cursor = after
            idle = 0.0
            while True:
                found = await asyncio.to_thread(
                    lambda: feed.page(
                        runtime.store.log.reader(),
                        after=cursor,
                        limit=500,
                        owner=owner,
                        types=types,
                        task_id=task_id,
                    )
                )
                for recorded in found:
                    yield ServerSentEventMessage(
                        data=msgspec.json.encode(event_json(recorded)).decode(),
                        event=recorded.event.__struct_config__.tag,  # type: ignore[arg-type]
                        id=str(recorded.position),
                    )
                if found:
                    cursor, idle = found[-1].position, 0.0
                    continue
                if idle >= 15:
                    yield ServerSentEventMessage(comment="keep-alive")
                    idle = 0.0
                await asyncio.sleep(0.2)
                idle += 0.2

        return ServerSentEvent(events())
