"""What the OpenAPI schema says that the handlers' signatures cannot: every error is a
plain-text body (as Chunkr's are), so each route lists the status codes it really answers with
``text/plain``, instead of Litestar's default JSON 400."""

from __future__ import annotations

from typing import Any

from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec

DESCRIPTIONS = {
    204: "Nothing to claim: no task became claimable while the claim waited",
    400: "Invalid request (the plain-text body says which field and why), or a command the "
    "task's status does not allow",
    401: "No API key, or an unknown or revoked one",
    403: "The key's role may not do this",
    404: "Task not found (missing, deleted, expired, or another owner's); for the webhook "
    "routes, the subscription or delivery (missing, deleted, or another owner's)",
    409: "The worker does not hold the task's lease",
    413: "Request body is too large",
    422: "Idempotency-Key was already used with a different request",
    429: "Rate limit exceeded for this key (see Retry-After), or, for an update, the task has "
    "reached its limit of events (no Retry-After: create a new task)",
    503: "The database cannot be written right now (disk full, read-only); see Retry-After",
}

#: Every route that needs a key.
AUTH = (401, 429)
#: Reads of one task.
READ = (400, *AUTH, 404)
#: Commands on one task (idempotent, through the writer); 413 only where there is a body.
WRITE = (400, *AUTH, 403, 404, 422, 503)


def json_reply(struct: Any) -> ResponseSpec:
    """The 200 response of a route that answers a raw reply (bytes it encoded itself) of
    ``struct``'s JSON, which Litestar cannot see in the signature."""
    return ResponseSpec(data_container=struct, description="OK", generate_examples=False)


def event_stream_reply() -> ResponseSpec:
    """The 200 response of the Server-Sent Events route (its handler answers a raw stream)."""
    return ResponseSpec(
        data_container=str,
        media_type="text/event-stream",
        description="Server-Sent Events: each event's id is its position, its event its type, "
        "its data the event's JSON; a keep-alive comment after 15 s of quiet; the stream ends "
        "when the key is revoked",
        generate_examples=False,
    )


def responses(*codes: int) -> dict[int, ResponseSpec]:
    """Plain-text responses for ``codes`` (204: no body)."""
    return {
        code: ResponseSpec(
            data_container=None if code == 204 else str,
            media_type=MediaType.TEXT,
            description=DESCRIPTIONS[code],
            generate_examples=False,
        )
        for code in sorted(set(codes))
    }
