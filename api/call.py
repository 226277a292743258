"""The request as the hot routes see it: the raw ASGI scope, read once, without Litestar's
per-request machinery.

Litestar builds a ``Request``, resolves dependencies, validates a signature model and converts
the handler's return value for every call of a handler that takes parameters: about half the CPU
a request costs here (measured in BENCHMARKS.md). The routes that carry the load (create, get, list,
cancel, update, delete and the worker routes) therefore take no parameters. Litestar still routes
them (``scope["path_params"]``), documents them, and maps their errors; they read what they need
from the ``Call`` that ``api.requestlog``'s middleware puts in a context variable for every
request, and return a ``RawResponse`` built from bytes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from litestar.exceptions import HTTPException

if TYPE_CHECKING:
    from api.keys import Caller
    from api.runtime import Reply, Runtime


class BodyTooLarge(HTTPException):
    status_code = 413
    detail = "Request body is too large"


class Call:
    """One HTTP request: its scope, the fields its log line carries, and lazily parsed parts."""

    __slots__ = ("scope", "receive", "request_id", "fields", "_headers", "_query", "_caller")

    def __init__(self, scope: Any, receive: Any, request_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.request_id = request_id
        #: Extra fields for the request's one log line (command, task_id, outcome, events).
        self.fields: dict[str, Any] = {}
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        self._caller: Caller | None = None

    @property
    def runtime(self) -> Runtime:
        return self.scope["litestar_app"].state.runtime

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    def path_param(self, name: str) -> str:
        return self.scope["path_params"][name]

    @property
    def headers(self) -> dict[str, str]:
        """Header names lower-cased; for a repeated header, its last value."""
        if self._headers is None:
            self._headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in self.scope.get("headers", ())
            }
        return self._headers

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; for a repeated one, its last value."""
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True)) if raw else {}
        return self._query

    def caller(self) -> Caller:
        """The authenticated caller (401 without a valid key; 429 over its rate limit)."""
        if self._caller is None:
            self._caller = self.runtime.authenticate(self.headers.get("authorization"))
        return self._caller

    def base_url(self) -> str:
        """Where this service is reached, for absolute URLs in responses."""
        public = self.runtime.settings.public_url
        if public:
            return public.rstrip("/")
        host = self.headers.get("host")
        if not host:
            server = self.scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else "localhost"
        return f"{self.scope.get('scheme', 'http')}://{host}{self.scope.get('root_path', '')}".rstrip("/")

    async def body(self) -> bytes:
        """The whole request body; 413 past the service's limit (checked against
        Content-Length first, then while reading)."""
        limit = self.runtime.settings.max_body_bytes
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge()
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_current: ContextVar[Call] = ContextVar("taskledger_call")


def current() -> Call:
    """The request being served (set by ``api.requestlog.request_log_middleware``)."""
    return _current.get()


def current_or_none() -> Call | None:
    return _current.get(None)


def begin(call: Call) -> None:
    _current.set(call)


class RawResponse:
    """An ASGI response from bytes: what the raw handlers return (Litestar sends any ASGI app a
    handler returns as it is)."""

    __slots__ = ("status", "headers", "body")

    def __init__(
        self, body: bytes, status: int = 200, media_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        encoded = [] if status == 204 else [
            (b"content-type", (f"{media_type}; charset=utf-8" if media_type.startswith("text/") else media_type).encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if headers:
            encoded.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        self.headers = encoded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if self.status == 204 else self.body})


def respond(reply: Reply, headers: dict[str, str] | None = None) -> RawResponse:
    return RawResponse(reply.body, reply.status_code, reply.media_type, headers)


class _Random:
    """Random bytes from the OS, fetched 4 KiB at a time: one system call per 256 ids instead
    of one per id (``uuid.uuid4`` calls ``os.urandom`` each time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            chunk = self._pool[self._at : self._at + n]
            self._at += n
            return chunk


_random = _Random()


def new_task_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then 74 random
    bits. Still a UUID, as Chunkr's task ids are, and still unguessable, but ids made close in
    time sort close together, so each create appends at the right edge of the B-trees keyed by
    task id (tasks, queue, blob references, the events' stream index) instead of dirtying a
    random page of each, which the commit would then have to write."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(_random.take(10))
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    return str(uuid.UUID(int=value))


def new_request_id() -> str:
    return _random.take(16).hex()
