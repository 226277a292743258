"""One table from errors to responses. Bodies are plain text, as Chunkr's are."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler

from api import metrics
from api.policy import Forbidden
from api.refusals import (
    BadRequest,
    Busy,
    IdempotencyMismatch,
    InvalidKey,
    RateLimited,
    TooManyStreams,
)
from ledger.errors import (
    ConcurrencyConflict,
    EventLimitReached,
    InvalidTransition,
    LeaseLost,
    LedgerError,
    StorageUnavailable,
    TaskAlreadyExists,
    TaskNotFound,
)
from ledger.handler import NothingToDo
from ledger.webhooks import WebhookExists, WebhookNotFound

log = structlog.get_logger("taskledger.api")

#: The status code of each error class; the body is the error's message.
STATUS: dict[type[BaseException], int] = {
    TaskNotFound: 404,
    WebhookNotFound: 404,
    WebhookExists: 409,
    InvalidTransition: 400,
    TaskAlreadyExists: 409,
    LeaseLost: 409,
    ConcurrencyConflict: 409,
    StorageUnavailable: 503,
    Busy: 503,
    NothingToDo: 204,
    BadRequest: 400,
    InvalidKey: 401,
    Forbidden: 403,
    IdempotencyMismatch: 422,
    RateLimited: 429,
    # No Retry-After: the limit does not lift with time (see docs/api.md, "The event limit").
    EventLimitReached: 429,
    # msgspec gives up on a body nested deeper than it can decode.
    RecursionError: 400,
}


def text(body: str, status_code: int, headers: dict[str, str] | None = None) -> Response[Any]:
    if status_code == 204:
        return Response(content=b"", status_code=204)
    return Response(
        content=body, status_code=status_code, media_type=MediaType.TEXT, headers=headers
    )


def status_for(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def message_of(exc: BaseException) -> str:
    if isinstance(exc, LedgerError):
        return exc.message
    if isinstance(exc, RecursionError):
        return "Invalid request body: it is nested too deeply"
    return str(exc)


def headers_for(exc: BaseException, status_code: int) -> dict[str, str] | None:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    if status_code == 401:
        return {"WWW-Authenticate": 'Bearer realm="taskledger"'}
    if status_code == 503:
        return {"Retry-After": "5"}
    return None


def handle_any(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status_code = status_for(exc)
    if status_code == 500:
        log.error("unhandled_error", error_type=type(exc).__name__, error=str(exc), exc_info=exc)
        return text("Internal server error", 500)
    if status_code == 503:
        log.warning("storage_unavailable", error=message_of(exc))
    if isinstance(exc, RateLimited):
        reason = "streams" if isinstance(exc, TooManyStreams) else "requests"
        metrics.RATE_LIMITED.labels(reason).inc()
    return text(message_of(exc), status_code, headers_for(exc, status_code))


def body_problem(message: str) -> str:
    """Litestar's word on a JSON body, in the words this API has always used."""
    if message == "'data'":
        return "Request body is empty; expected a JSON object"
    if message.startswith(("Expected `object`", "Expected `object | null`")):
        return "Request body must be a JSON object"
    return message


def validation_message(exc: ValidationException) -> str | None:
    """``Invalid request: <where>: <why>`` for each problem Litestar found, with a body's
    fields named as msgspec names them (``$.chunk_processing.target_length``)."""
    if not isinstance(exc.extra, list) or not exc.extra:
        return None
    parts = []
    for item in exc.extra:
        if not isinstance(item, dict):
            continue
        key, reason = item.get("key"), str(item.get("message", "invalid value"))
        if item.get("source") == "body":
            if key == "data":
                problem = body_problem(reason)
                if problem != reason:
                    return problem
                parts.append(f"Invalid request body: {reason}")
            else:
                parts.append(f"Invalid request body: {reason} - at `$.{key}`")
        else:
            parts.append(
                f"Invalid request: {key}: {reason}" if key else f"Invalid request: {reason}"
            )
    return "; ".join(parts) or None


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    message = exc.detail
    if isinstance(exc, ValidationException):
        message = validation_message(exc) or message
    if exc.status_code == 400 and message.startswith(("JSON is malformed", "Input data was")):
        message = f"Request body is not valid JSON: {message}"
    elif exc.status_code == 400 and message.startswith("Invalid UTF-8"):
        message = "Request body is not valid JSON: a string is not valid UTF-8"
    elif exc.status_code == 400 and message.startswith("Number out of range"):
        # msgspec finds it before the body meets its type, so it cannot say which field.
        message = "Invalid request body: a number is out of range"
    if exc.status_code == 413:
        handler = request.scope.get("route_handler")
        limit = (
            handler.resolve_request_max_body_size()
            if isinstance(handler, HTTPRouteHandler)
            else None
        )
        message = "Request body is too large" + (f" (limit {limit} bytes)" if limit else "")
    return text(message, exc.status_code, exc.headers)


#: Two entries, one table (STATUS): HTTP errors Litestar raises itself, and everything else.
EXCEPTION_HANDLERS: dict[Any, Any] = {HTTPException: handle_http, Exception: handle_any}
