"""structlog set-up and the one line per request (request id, route, status, duration).

Console output on a terminal, JSON lines otherwise. The line never holds a key, a body or a file.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.core import log_fields
from api.ids import new_request_id

log = structlog.get_logger("taskledger.api")

_encoder = msgspec.json.Encoder()


def _json_line(event: dict[str, Any], **_: Any) -> bytes:
    return _encoder.encode(event)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def add_request_id(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every line logged while serving a request carries its request id."""
    fields = log_fields.get()
    if fields is not None and "request_id" in fields:
        event.setdefault("request_id", fields["request_id"])
    return event


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    binary = getattr(sys.stderr, "buffer", None)
    renderer: Any = structlog.dev.ConsoleRenderer()
    factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    if json and binary is not None:
        # Bytes straight from msgspec to the file: structlog's fastest path.
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
        factory = structlog.BytesLoggerFactory(file=binary)
    elif json:
        renderer = structlog.processors.JSONRenderer(
            serializer=lambda event, **_: _encoder.encode(event).decode()
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Bind a request id (the client's ``X-Request-Id`` if it is sane), answer it in the
    response's ``X-Request-Id``, and log one ``request`` line when the response is sent, with
    whatever the service noted (``api.core.note``: the command, its task and its outcome)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if given and _REQUEST_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        fields: dict[str, Any] = {"request_id": request_id}
        token = log_fields.set(fields)
        started = time.perf_counter()
        status = 500
        encoded_id = request_id.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (b"x-request-id", encoded_id)],
                }
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            route = scope.get("path_template") or scope.get("path")
            log.info(
                "request",
                method=scope.get("method"),
                route=route,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                **fields,
            )
            log_fields.reset(token)

    return middleware
