"""History and the live feed: a task's events, the global feed with a cursor, and the same feed
as Server-Sent Events. Users see their own live tasks (a deleted or expired task's events leave
their feed, all but its tombstone); admins see everything, deleted and expired tasks included
(``api.policy``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.datastructures import ResponseHeader
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEventMessage
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Scope, Send

from api.auth import guard
from api.live import Follow
from api.openapi import AUTH, READ, event_stream_reply, responses
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
#: The stream's 429: the rate limit, or the key's streams (serve --max-streams-per-key).
TOO_MANY = ResponseSpec(
    data_container=str,
    media_type=MediaType.TEXT,
    description="Rate limit exceeded for this key, or it already holds as many open streams as "
    "it may (serve --max-streams-per-key); see Retry-After",
    generate_examples=False,
)


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
        responses={**responses(400, *AUTH, 403), 200: event_stream_reply(), 429: TOO_MANY},
    )
    async def stream(
        self,
        request: HttpRequest,
        service: Service,
        after: After = 0,
        type: Types = None,
        task_id: OneTask = None,
        last_event_id: LastEventId = None,
    ) -> ASGIStreamingResponse:
        if last_event_id is not None:
            last = last_event_id.strip()
            if (
                not (last.isascii() and last.isdigit() and len(last) <= 19)
                or int(last) > MAX_POSITION
            ):
                raise BadRequest("Last-Event-ID must be an event position")
            after = int(last)
        # A bad request is a 400 here, and a key past its streams a 429, not a stream that
        # ends at once.
        follow = await service.follow(request.user, after=after, types=type or (), task_id=task_id)
        return EventStream(sse(follow), on_close=follow.close)


async def sse(follow: Follow) -> AsyncIterator[bytes]:
    """The stream's pages as Server-Sent Events: ``id:`` the position, ``event:`` the type; a
    keep-alive comment for an empty page; a last comment when the key was revoked."""
    async for page in follow.pages():
        if not page:
            yield ServerSentEventMessage(comment="keep-alive", data=None).encode()
        for recorded in page:
            yield ServerSentEventMessage(
                data=msgspec.json.encode(event_json(recorded)).decode(),
                event=type_of(recorded.event),
                id=str(recorded.position),
            ).encode()
    if follow.revoked:
        yield ServerSentEventMessage(comment="the API key was revoked", data=None).encode()


class EventStream(ASGIStreamingResponse):
    """A ``text/event-stream`` response that calls ``on_close`` however it ends: the stream ran
    out (the key was revoked), the client hung up, or it was cancelled before its first byte.
    (A generator's own ``finally`` does not run if it never started.)"""

    __slots__ = ("on_close",)

    def __init__(self, iterator: AsyncIterator[bytes], *, on_close: Callable[[], Any]) -> None:
        super().__init__(
            iterator=iterator,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def type_of(event: msgspec.Struct) -> str:
    return str(event.__struct_config__.tag)
