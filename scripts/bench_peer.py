"""The benchmark's peer: task create / claim / cancel / get written with the ``eventsourcing``
library (9.5.6) and its SQLite persistence, with its defaults, as a user of that library would
write it: an Aggregate with event-decorated methods, an Application, and a Litestar app with the
same uvicorn settings as taskledger.

Run: ``BENCH_DB=/tmp/peer.db uvicorn --factory scripts.bench_peer:create_app``.
"""

from __future__ import annotations

import os
import uuid

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
    return Tasks(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path})


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
