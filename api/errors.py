"""One mapping from errors to responses. Bodies are plain text, as Chunkr's are."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from api.idempotency import IdempotencyMismatch
from api.keys import InvalidKey
from api.runtime import Forbidden, RateLimited
from api.schemas import BadRequest
from ledger.errors import (
    ConcurrencyConflict,
    InvalidTransition,
    LeaseLost,
    LedgerError,
    StorageUnavailable,
    TaskAlreadyExists,
    TaskNotFound,
)
from ledger.handler import NothingToDo

log = structlog.get_logger("taskledger.api")

#: (status code, extra headers) for each error class; the body is the error's message.
STATUS: dict[type[Exception], int] = {
    TaskNotFound: 404,
    InvalidTransition: 400,
    TaskAlreadyExists: 409,
    LeaseLost: 409,
    ConcurrencyConflict: 409,
    StorageUnavailable: 503,
    NothingToDo: 204,
    BadRequest: 400,
    InvalidKey: 401,
    Forbidden: 403,
    IdempotencyMismatch: 422,
    RateLimited: 429,
}


def text(body: str, status_code: int, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(
        content=body, status_code=status_code, media_type=MediaType.TEXT, headers=headers
    )


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def handle_known(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    status_code = status_for(exc)
    message = exc.message if isinstance(exc, LedgerError) else str(exc)
    headers = None
    if status_code == 503:
        headers = {"Retry-After": "5"}
        log.warning("storage_unavailable", error=message)
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    if status_code == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="taskledger"'}
    if status_code == 204:
        return Response(content=b"", status_code=204)
    return text(message, status_code, headers)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[str]:
    message = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        parts = []
        for item in exc.extra:
            if isinstance(item, dict):
                key = item.get("key")
                reason = item.get("message", "invalid value")
                parts.append(f"{key}: {reason}" if key else str(reason))
        if parts:
            message = "Invalid request: " + "; ".join(parts)
    if exc.status_code == 413:
        message = "Request body is too large"
    return text(message, exc.status_code, exc.headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    log.error("unhandled_error", error_type=type(exc).__name__, error=str(exc), exc_info=exc)
    return text("Internal server error", 500)


def handle_any(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    if status_for(exc) == 500:
        return handle_unexpected(request, exc)
    return handle_known(request, exc)


#: Two entries, not one per error class: Litestar merges this map for every request.
EXCEPTION_HANDLERS: dict[Any, Any] = {HTTPException: handle_http, Exception: handle_any}
