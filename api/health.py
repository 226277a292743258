"""``GET /health`` and ``GET /``: no key needed, plain text, as Chunkr answers (liveness: the
process answers). ``GET /ready``: no key needed either; 200 only when the database answers and
would take a write now (readiness). ``GET /metrics``: the Prometheus text format
(``api.metrics``), for an admin key, or for anyone under ``serve --metrics-public``."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec

from api import metrics
from api.openapi import AUTH, responses
from api.policy import UseCase, authorize
from ledger import __version__


async def may_read_metrics(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """An admin key, unless ``settings.metrics_public`` lets anyone read them."""
    if connection.app.state.service.settings.metrics_public:
        return
    if connection.user is None:
        raise connection.auth
    authorize(UseCase.METRICS, connection.user)


class HealthController(Controller):
    path = "/"
    tags = ["health"]

    # security=[{}]: no key needed (it overrides the schema's global ApiKey requirement).
    @get(
        ["/health", "/"],
        media_type="text/plain",
        summary="Health check",
        sync_to_thread=False,
        security=[{}],
        exclude_from_auth=True,
    )
    def health(self) -> str:
        return f"OK - Version {__version__}"

    @get(
        "/ready",
        media_type="text/plain",
        summary="Readiness check",
        description="200 when the database answers and would accept a write now; 503 (with "
        "Retry-After) while it is unreachable or refuses writes (disk full, read-only).",
        sync_to_thread=True,
        security=[{}],
        exclude_from_auth=True,
        responses=responses(503),
    )
    def ready(self, state: State) -> str:
        # StorageUnavailable goes through the error table: 503, its reason, Retry-After.
        state.service.check_ready()
        return "Ready"

    @get(
        "/metrics",
        summary="Prometheus metrics",
        description="The Prometheus text format: requests by route, events appended by type, "
        "group-commit batches, sweeps, replays, rate-limited requests, webhook deliveries, and "
        "tasks by status and the claimable queue read from the database. An admin key, or none "
        "under serve --metrics-public.",
        sync_to_thread=True,
        guards=[may_read_metrics],
        responses={
            **responses(*AUTH, 403),
            200: ResponseSpec(
                data_container=str,
                media_type="text/plain",
                description="The metrics, in the Prometheus text exposition format 0.0.4",
                generate_examples=False,
            ),
        },
    )
    def metrics(self, state: State) -> Response[bytes]:
        body = metrics.exposition(state.service.store.views)
        return Response(body, media_type=metrics.CONTENT_TYPE)
