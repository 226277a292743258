"""The event loop's CPU per request of create and GET, with no HTTP server: the app is called as
an ASGI application in this process, 32 requests at a time, and the loop thread's CPU time
(``time.thread_time``) is divided by the requests. What Litestar's per-request machinery, our
handlers and the request log cost the loop, apart from uvicorn; the best of five runs of 2,000
requests each, so a burst of noise on the machine does not count.

    python -m scripts.bench_asgi

BENCHMARKS.md's "What the idiomatic routes cost" was measured with it (and with the same loop
over a checkout of the code before the application layer).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from api.app import create_app
from api.composition import Store
from api.keys import create_key
from api.requestlog import configure_logging
from api.settings import Settings

REQUESTS = 2000
BATCH = 32
RUNS = 5
BODY = json.dumps({"file": "aGVsbG8=", "file_name": "a.txt"}).encode()


def caller(app: Any, key: str) -> Callable[..., Awaitable[tuple[int, bytes]]]:
    async def call(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = [
            (b"host", b"bench"),
            (b"authorization", key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    return call


async def measure(app: Any, key: str) -> dict[str, float]:
    started = asyncio.Event()

    async def lifespan_receive() -> dict[str, Any]:
        if not started.is_set():
            return {"type": "lifespan.startup"}
        await asyncio.Event().wait()
        return {}

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_receive, lifespan_send)
    )
    await started.wait()
    call = caller(app, key)
    status, body = await call("POST", "/api/v1/task/parse", BODY)
    assert status == 200, body
    task_id = json.loads(body)["task_id"]
    routes = {
        "create": lambda: call("POST", "/api/v1/task/parse", BODY),
        "get": lambda: call("GET", f"/api/v1/task/{task_id}"),
    }
    best: dict[str, float] = {}
    for name, request in routes.items():
        await asyncio.gather(*(request() for _ in range(200)))  # warm up
        for _ in range(RUNS):
            cpu = time.thread_time()
            for _ in range(REQUESTS // BATCH):
                answers = await asyncio.gather(*(request() for _ in range(BATCH)))
                assert all(status == 200 for status, _ in answers)
            per_request = (time.thread_time() - cpu) / (REQUESTS // BATCH * BATCH)
            best[name] = min(best.get(name, float("inf")), per_request * 1e6)
    lifespan.cancel()
    return best


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="taskledger-asgi-"))
    db = work / "ledger.db"
    store = Store(db)
    _, key = create_key(store.records, "bench", "user")
    store.close()
    # The request log as ``serve`` writes it (JSON lines), to a sink.
    sys.stderr = open(os.devnull, "w")
    configure_logging(json=True)
    figures = asyncio.run(measure(create_app(Settings(db_path=db, sweep_interval=0)), key))
    for name, micros in figures.items():
        print(f"{name}: {micros:.0f} us of event-loop CPU per request (best of {RUNS})")


if __name__ == "__main__":
    main()
