"""History and the live feed: a task's events, the global feed with a cursor, and the same feed
as Server-Sent Events. Users see their own tasks; admins see everything, deleted and expired
tasks included (``api.policy``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import ResponseHeader
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.auth import guard
from api.openapi import AUTH, READ, responses
from api.policy import UseCase
from api.refusals import BadRequest
from api.schemas import EventJSON, FeedPage, event_json
from api.service import MAX_FEED_LIMIT, MAX_HISTORY_LIMIT
from api.tasks import HttpRequest, Service

#: The largest position a 64-bit integer holds.
MAX_POSITION = 2**63 - 1
After = Annotated[int, QueryParameter(ge=0, le=MAX_POSITION, description="The last position seen")]
Types = Annotated[list[str] | None, QueryParameter(description="Only these event types")]
OneTask = Annotated[str | None, QueryParameter(description="Only this task's events")]
LastEventId = Annotated[str | None, HeaderParameter(name="Last-Event-ID")]


class AuditController(Controller):
    path = "/api/v1"
    tags = ["audit"]

    @get(
        "/task/{task_id:str}/events",
        summary="A page of a task's history, oldest first",
        guards=[guard(UseCase.HISTORY)],
        responses=responses(*READ),
        response_headers=[
            ResponseHeader(
                name="X-Next-After",
                documentation_only=True,
                value="1000",  # for the schema: a string
                description="Only when there are more events: the last version on this page, "
                "to pass as the next page's after",
            ),
            ResponseHeader(
                name="Link",
                documentation_only=True,
                value='</api/v1/task/{task_id}/events?after=1000&limit=1000>; rel="next"',
                description='Only when there are more events: the next page, rel="next"',
            ),
        ],
    )
    async def task_events(
        self,
        request: HttpRequest,
        service: Service,
        task_id: FromPath[str],
        after: Annotated[
            int,
            QueryParameter(ge=0, le=MAX_POSITION, description="The last version seen (0: none)"),
        ] = 0,
        limit: Annotated[
            int, QueryParameter(ge=1, le=MAX_HISTORY_LIMIT, description="Events per page")
        ] = MAX_HISTORY_LIMIT,
    ) -> Response[list[EventJSON]]:
        page = await service.history(request.user, task_id, after=after, limit=limit)
        headers = {}
        if page.next_after is not None:
            next_page = (
                f"/api/v1/task/{quote(task_id, safe='')}/events"
                f"?after={page.next_after}&limit={limit}"
            )
            headers = {"X-Next-After": str(page.next_after), "Link": f'<{next_page}>; rel="next"'}
        return Response([event_json(e) for e in page.events], headers=headers)

    @get(
        "/events",
        summary="The global event feed, in position order",
        guards=[guard(UseCase.FEED)],
        responses=responses(400, *AUTH, 403),
    )
    async def events(
        self,
        request: HttpRequest,
        service: Service,
        after: After = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_FEED_LIMIT)] = 100,
        type: Types = None,
        task_id: OneTask = None,
    ) -> FeedPage:
        found = await service.feed(
            request.user, after=after, limit=limit, types=type or (), task_id=task_id
        )
        next_after = found[-1].position if found else after
        return FeedPage(events=[event_json(e) for e in found], next_after=next_after)

    @get(
        "/events/stream",
        summary="The event feed, live, as Server-Sent Events",
        media_type="text/event-stream",
        guards=[guard(UseCase.FEED)],
        responses=responses(400, *AUTH, 403),
    )
    async def stream(
        self,
        request: HttpRequest,
        service: Service,
        after: After = 0,
        type: Types = None,
        task_id: OneTask = None,
        last_event_id: LastEventId = None,
    ) -> ServerSentEvent:
        if last_event_id is not None:
            last = last_event_id.strip()
            if (
                not (last.isascii() and last.isdigit() and len(last) <= 19)
                or int(last) > MAX_POSITION
            ):
                raise BadRequest("Last-Event-ID must be an event position")
            after = int(last)
        caller, types = request.user, type or ()
        # Checked now, so a bad request is a 400 and not a stream that ends at once.
        await service.feed(caller, after=after, limit=1, types=types, task_id=task_id)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            cursor, idle = after, 0.0
            while True:
                found = await service.feed(
                    caller, after=cursor, limit=500, types=types, task_id=task_id
                )
                for recorded in found:
                    yield ServerSentEventMessage(
                        data=msgspec.json.encode(event_json(recorded)).decode(),
                        event=type_of(recorded.event),
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


def type_of(event: msgspec.Struct) -> str:
    return str(event.__struct_config__.tag)
