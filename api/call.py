"""The request as the hot routes see it: the raw ASGI scope, read once, without Litestar's
per-request machinery.

Litestar builds a ``Request``, resolves dependencies, validates a signature model and converts
the handler's return value for every call of a handler that takes parameters: about half the CPU
a request costs here (measured in BENCHMARKS.md). The routes that carry the load (create, get,
cancel, update, delete and the worker routes) therefore take no parameters. Litestar still routes
them (``scope["path_params"]``), documents them, and maps their errors; they read what they need
from the ``Call`` that ``api.requestlog``'s middleware puts in a context variable for every
request, and return an ``ASGIResponse`` built from bytes.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from litestar.exceptions import HTTPException
from litestar.response.base import ASGIResponse

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


def begin(call: Call) -> None:
    _current.set(call)


def respond(reply: Reply, headers: dict[str, str] | None = None) -> ASGIResponse:
    return ASGIResponse(
        body=reply.body,
        status_code=reply.status_code,
        media_type=reply.media_type,
        headers=headers,
    )
