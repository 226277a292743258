"""``create_app(settings)``: the Litestar application over one ledger database."""

from __future__ import annotations

import asyncio
import os
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api.audit import AuditController
from api.errors import EXCEPTION_HANDLERS
from api.health import HealthController
from api.keys import Caller
from api.requestlog import request_log_middleware
from api.runtime import Runtime
from api.settings import Settings, settings_from_env
from api.sweeper import run_sweepers
from api.tasks import TaskController, TasksController
from api.worker import WorkerController
from ledger import __version__


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        sweeper = asyncio.create_task(run_sweepers(runtime)) if settings.sweep_interval > 0 else None
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            runtime.close()

    def provide_runtime(state: State) -> Runtime:
        return state.runtime

    # ``caller`` depends on ``runtime`` so Litestar resolves them one after the other; two
    # independent dependencies would cost a task group per request.
    def provide_caller(request: Request[Any, Any, Any], runtime: Runtime) -> Caller:
        return runtime.authenticate(request.headers.get("authorization"))

    return Litestar(
        route_handlers=[HealthController, TaskController, TasksController, WorkerController, AuditController],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "caller": Provide(provide_caller, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_log_middleware],
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="taskledger",
            version=__version__,
            description="An event-sourced task ledger with a Chunkr-compatible task API.",
            path="/docs",
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(type="apiKey", name="Authorization", security_scheme_in="header")
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
