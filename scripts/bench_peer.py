"""The benchmark's peer: task create / claim / cancel / get written with the ``eventsourcing``
library (9.5.6) and its SQLite persistence, with its defaults, as a user of that library would
write it: an Aggregate with event-decorated methods, an Application, and a Litestar app with the
same uvicorn settings as taskledger. When ``BENCH_DB`` is a ``postgresql://`` URL it uses the
library's PostgreSQL persistence instead (``eventsourcing.postgres``, its defaults: a pool of 5
connections and 10 more on demand), configured from the URL through its ``POSTGRES_*``
settings.

Run: ``BENCH_DB=/tmp/peer.db uvicorn --factory scripts.bench_peer:create_app``.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import unquote, urlsplit

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from litestar import Litestar, Request, Response, get, post


class Task(Aggregate):
    @event("Created")
    def __init__(self, owner: str, configuration: dict, file: str) -> None:
        self.owner = owner
        self.configuration = configuration
        self.file = file
        self.status = "Starting"
        self.message = "Task queued"
        self.worker_id: str | None = None

    @event("Claimed")
    def claim(self, worker_id: str) -> None:
        self.status = "Processing"
        self.message = "Task started"
        self.worker_id = worker_id

    @event("Cancelled")
    def cancel(self) -> None:
        self.status = "Cancelled"
        self.message = "Task cancelled"


class Tasks(Application[uuid.UUID]):
    def create(self, owner: str, configuration: dict, file: str) -> uuid.UUID:
        task = Task(owner, configuration, file)
        self.save(task)
        return task.id

    def claim(self, task_id: uuid.UUID, worker_id: str) -> Task:
        task: Task = self.repository.get(task_id)
        if task.status != "Starting":
            raise ValueError(f"Task cannot be claimed: status is {task.status}")
        task.claim(worker_id)
        self.save(task)
        return task

    def cancel(self, task_id: uuid.UUID) -> None:
        task: Task = self.repository.get(task_id)
        if task.status != "Starting":
            raise ValueError(f"Task cannot be cancelled: status is {task.status}")
        task.cancel()
        self.save(task)

    def get(self, task_id: uuid.UUID) -> Task:
        return self.repository.get(task_id)


def make_application(path: str) -> Tasks:
    if path.startswith(("postgresql://", "postgres://")):
        return Tasks(env=postgres_env(path))
    return Tasks(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path})


def postgres_env(url: str) -> dict[str, str]:
    """eventsourcing's PostgreSQL settings for the database a URL names (everything else at the
    library's defaults)."""
    parts = urlsplit(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
    }


def task_json(task: Task) -> dict:
    return {
        "task_id": str(task.id),
        "status": task.status,
        "message": task.message,
        "configuration": task.configuration,
    }


def create_app() -> Litestar:
    tasks = make_application(os.environ["BENCH_DB"])

    @post("/tasks", status_code=200, sync_to_thread=True)
    def create(data: dict) -> dict:
        task_id = tasks.create(
            "bench", {k: v for k, v in data.items() if k != "file"}, str(data.get("file", ""))
        )
        return {"task_id": str(task_id), "status": "Starting", "message": "Task queued"}

    @get("/tasks/{task_id:uuid}", sync_to_thread=True)
    def read(task_id: uuid.UUID) -> dict:
        return task_json(tasks.get(task_id))

    @post("/tasks/{task_id:uuid}/claim", status_code=200, sync_to_thread=True)
    def claim(task_id: uuid.UUID, request: Request) -> Response:
        try:
            return Response(content=task_json(tasks.claim(task_id, "bench-worker")))
        except ValueError as exc:
            return Response(content=str(exc), status_code=400)

    @post("/tasks/{task_id:uuid}/cancel", status_code=200, sync_to_thread=True)
    def cancel(task_id: uuid.UUID) -> Response:
        try:
            tasks.cancel(task_id)
        except ValueError as exc:
            return Response(content=str(exc), status_code=400)
        return Response(content="Task cancelled", media_type="text/plain")

    return Litestar(route_handlers=[create, read, claim, cancel], debug=False)
