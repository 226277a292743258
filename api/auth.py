"""Authentication and authorisation for the HTTP adapter.

``KeyAuthentication`` puts the caller (``api.policy.Caller``) on ``request.user``; a route's
permission is an **async** guard made by ``guard(use_case)`` from the one policy table (Litestar 2
runs sync guards on a thread). Also the per-request facts the handlers pass on to the service:
the request id, the base of absolute URLs (never a Host that is not allowed: a forged Host
cannot plant links), and the links an answer carries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import Guard

from api.policy import UseCase, authorize
from api.refusals import InvalidKey, RateLimited

if TYPE_CHECKING:
    from litestar import Request
    from litestar.handlers.base import BaseRouteHandler

    from api.links import Linker
    from api.service import TaskLedger

#: The API's own documentation needs no key (nor do the routes marked ``exclude_from_auth``:
#: the health check). A pattern is matched against every request's path, so there is one.
PUBLIC_DOCS = "^/docs"


class KeyAuthentication(AbstractAuthenticationMiddleware):
    """``Authorization: <key>`` or ``Authorization: Bearer <key>`` -> the caller on
    ``request.user``. A refusal (InvalidKey: 401, RateLimited: 429) is kept as ``request.auth``
    and raised by the route's guard, inside the route, so that its response goes through the
    same error table, request log line and X-Request-Id as every other answer (an error raised
    in a middleware would be answered outside them)."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        service: TaskLedger = connection.app.state.service
        try:
            caller = service.authenticate(header(connection.scope, b"authorization"))
        except (InvalidKey, RateLimited) as refused:
            return AuthenticationResult(user=None, auth=refused)
        return AuthenticationResult(user=caller, auth=None)


def guard(use_case: UseCase) -> Guard:
    """An async guard letting through the authenticated callers whose role
    ``api.policy.POLICY`` allows ``use_case``."""

    async def allowed(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if connection.user is None:
            raise connection.auth
        authorize(use_case, connection.user)

    allowed.__name__ = f"may_{use_case.name.lower()}"
    return allowed


def header(scope: Any, name: bytes) -> str | None:
    """One request header's value (its last, if repeated), read from the ASGI scope as is:
    cheaper than building Litestar's Headers for the one or two a request needs here."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return found.decode("latin-1") if found is not None else None


def request_id(request: Request[Any, Any, Any]) -> str | None:
    """This request's id (the log line's, and the events' envelope's)."""
    return request.scope.get("state", {}).get("request_id")


def base_url(request: Request[Any, Any, Any]) -> str:
    """Where this service is reached, for absolute URLs in responses: ``--public-url`` if set,
    else the request's own scheme and Host if ``--allowed-hosts`` lists that Host, else the
    first allowed host (``api.links.Hosts``): a forged Host header never names the links."""
    service: TaskLedger = request.app.state.service
    public = service.settings.public_url
    if public:
        return str(public).rstrip("/")
    scope = request.scope
    scheme = scope.get("scheme", "http")
    host = service.hosts.choose(header(scope, b"host"), scheme, scope.get("server"))
    return f"{scheme}://{host}{scope.get('root_path', '')}".rstrip("/")


def linker(request: Request[Any, Any, Any], *, base64_urls: bool = False) -> Linker:
    """The links of this request's answer: its base URL, and file links for its caller (signed,
    or ``data:`` URLs with ``base64_urls``)."""
    service: TaskLedger = request.app.state.service
    return service.linker(request.user, base_url(request), base64_urls=base64_urls)
