"""``create_app(settings)``: the Litestar application over one ledger database.

The app is a thin adapter: a lifespan opens the service (``api.composition``), the
authentication middleware puts the caller on ``request.user``, guards come from the policy
table, handlers call one service method each, and one table maps errors to plain-text bodies.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import swagger_ui_bundle
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope

from api.audit import AuditController
from api.auth import PUBLIC_DOCS, KeyAuthentication
from api.composition import close_service, open_service, start_dispatcher
from api.errors import EXCEPTION_HANDLERS
from api.files import FilesController
from api.health import HealthController
from api.hooks import WebhooksController
from api.httpmetrics import request_metrics
from api.requestlog import request_log_middleware
from api.service import TaskLedger
from api.settings import Settings, settings_from_env
from api.sweeper import Sweepers
from api.tasks import TaskController, TasksController
from api.worker import WorkerController
from ledger import __version__


def provide_service(state: State) -> TaskLedger:
    service: TaskLedger = state.service
    return service


#: Response headers a browser script may read: the request id, a retry's wait, a deprecation.
EXPOSED_HEADERS = ["X-Request-Id", "Retry-After", "Content-Disposition"]


def cors_config(settings: Settings) -> CORSConfig | None:
    """CORS for ``settings.cors_origins`` (Chunkr answers every route with ``*``): any method
    and request header; no credentials (the API key travels in a header, never a cookie)."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )


async def allow_every_method(message: Message, scope: Scope) -> None:
    """OPTIONS answers ``Allow`` with every method of its path. Litestar 2.25 generates the
    OPTIONS handler when a path's first handler is registered and it keeps that route's methods:
    a path served by two handlers (GET and DELETE /api/v1/task/{id}) would answer one of them
    (tests/api/test_cors.py checks every path)."""
    if scope.get("method") != "OPTIONS" or message["type"] != "http.response.start":
        return
    template = scope.get("path_template")
    for route in scope["litestar_app"].routes:
        if isinstance(route, HTTPRoute) and route.path_format == template:
            MutableScopeHeaders.from_message(message)["Allow"] = ", ".join(sorted(route.methods))
            return


#: Where the API's documentation page loads its scripts from: this server, never a CDN (the page
#: must work offline and must not pull code from a third party into a browser holding a key).
DOCS_ASSETS = "/docs/assets"


def docs_page() -> SwaggerRenderPlugin:
    """Swagger UI at ``/docs`` (and ``/docs/swagger``), its assets served from the
    ``swagger-ui-bundle`` package."""
    return SwaggerRenderPlugin(
        path=["/", "/swagger"],
        js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
    )


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        service = open_service(settings)
        app.state.service = service
        sweepers = Sweepers(service) if settings.sweep_interval > 0 else None
        if sweepers is not None:
            sweepers.start()
        dispatcher = start_dispatcher(service) if settings.webhook_concurrency > 0 else None
        try:
            yield
        finally:
            if dispatcher is not None:
                await asyncio.to_thread(dispatcher.stop)
            if sweepers is not None:
                # Off the loop: the pass under way may be waiting for the writer.
                await asyncio.to_thread(sweepers.stop)
            close_service(service)

    return Litestar(
        route_handlers=[
            HealthController,
            TaskController,
            TasksController,
            # A worker's complete carries the output: its own limit (serve --max-output-mb).
            Router(
                path="/",
                route_handlers=[WorkerController],
                request_max_body_size=settings.max_output_bytes,
            ),
            AuditController,
            WebhooksController,
            create_static_files_router(
                path=DOCS_ASSETS, directories=[swagger_ui_bundle.swagger_ui_path], name="docs"
            ),
            FilesController,
        ],
        dependencies={"service": Provide(provide_service, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            request_log_middleware,
            # Requests by route template (not by path: a task id is not a label), method and
            # status, and their latencies: taskledger_http_requests_total and the rest.
            request_metrics(exclude=PUBLIC_DOCS),
            DefineMiddleware(KeyAuthentication, exclude=PUBLIC_DOCS),
        ],
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        cors_config=cors_config(settings),
        before_send=[allow_every_method],
        openapi_config=OpenAPIConfig(
            render_plugins=[docs_page()],
            title="taskledger",
            version=__version__,
            description="An event-sourced task ledger with a Chunkr-compatible task API.",
            path="/docs",
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(
                        type="apiKey", name="Authorization", security_scheme_in="header"
                    )
                }
            ),
            security=[{"ApiKey": []}],
        ),
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """The app factory uvicorn calls in each worker process of ``taskledger serve --workers N``."""
    from api.requestlog import configure_logging

    flag = os.environ.get("TASKLEDGER_LOG_JSON")
    configure_logging(json=None if flag is None else flag == "1")
    return create_app(settings_from_env())
