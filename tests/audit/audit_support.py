"""Helpers for the audit tests: the operator command line, a task taken through the
update-then-cancel story over HTTP, bursts of concurrent writers, and small helpers for reading
JSON lines and comparing Task JSON served by two different servers. Fixtures are in conftest.py.

The operator commands run as ``python -m scripts.cli ...`` in a subprocess of this interpreter,
with stdout a pipe (so they print JSON lines).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.inprocess import InProcessServer, add_key  # noqa: F401 - for the test modules
from tests.pg import execute
from tests.server import Server
from tests.support import (  # noqa: F401 - wait_for and unsigned for the test modules
    chunkr_output,
    unsigned,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
TEXT = "hello, audit"
FILE = base64.b64encode(f"{TEXT}\n".encode()).decode()
#: ``taskledger`` as a command line: ``[*TASKLEDGER, "verify", "--db", path]``.
TASKLEDGER = [sys.executable, "-m", "scripts.cli"]


# -- the command line ------------------------------------------------------------------------


def taskledger(
    *args: str, db: Path | None = None, stdout: Any = subprocess.PIPE, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``taskledger ARGS [--db DB]``; stdout is a pipe (so JSON lines), never raises on exit."""
    command = [*TASKLEDGER, *args]
    if db is not None:
        command += ["--db", str(db)]
    return subprocess.run(
        command,
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as JSON (fails the test on a line that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def key_id(key: str) -> str:
    """The public id inside a key ``tlk_<12 hex>_<secret>``: what the log records as actor."""
    return key[4:16]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def query(db: Path | str, sql: str, *params: Any) -> list[tuple]:
    """Rows of ``sql`` (portable SQL, ``?`` for each parameter) on either backend's ``db``."""
    return execute(db, sql, *params)


def served(response: httpx.Response, server: Server | InProcessServer) -> Any:
    """A JSON body with the server's own base URL (in task_url and input_file_url) replaced,
    and its signed links' expiry and signature blanked, so answers of two servers (each signing
    with a secret of its own) can be compared."""
    assert response.status_code == 200, response.text
    return json.loads(unsigned(response.text.replace(server.url, "http://server")))


def feed_all(client: httpx.Client, *, limit: int = 1000, **params: Any) -> list[dict[str, Any]]:
    """Every event of GET /events, page by page."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = client.get("/events", params={"after": after, "limit": limit, **params})
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["events"]:
            assert page["next_after"] == after
            return events
        events += page["events"]
        after = page["next_after"]


# -- driving tasks over HTTP ------------------------------------------------------------------


@dataclass
class Story:
    """A task taken through create, claim, succeed, update, cancel; each response kept."""

    task_id: str
    created: dict[str, Any]
    claimed: dict[str, Any]
    succeeded: dict[str, Any]
    updated: dict[str, Any]
    output: dict[str, Any]


class Tasks:
    """Task commands over HTTP for one user key and one worker key."""

    def __init__(self, user: httpx.Client, worker: httpx.Client) -> None:
        self.user = user
        self.worker = worker

    def create(self, client: httpx.Client | None = None, **fields: Any) -> dict[str, Any]:
        body = {"file": FILE, "file_name": "a.txt", **fields}
        response = (client or self.user).post("/task/parse", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def claim(self, task_id: str, worker_id: str = "w-audit") -> dict[str, Any]:
        response = self.worker.post("/worker/claim", json={"worker_id": worker_id})
        assert response.status_code == 200, response.text
        # The queue is FIFO: the tests keep it empty except for the task they mean to claim.
        assert response.json()["task_id"] == task_id, "another task was at the head of the queue"
        return response.json()

    def complete(
        self, task_id: str, output: dict[str, Any], worker_id: str = "w-audit"
    ) -> dict[str, Any]:
        response = self.worker.post(
            f"/task/{task_id}/complete", json={"worker_id": worker_id, "output": output}
        )
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, task_id: str, client: httpx.Client | None = None) -> None:
        response = (client or self.user).get(f"/task/{task_id}/cancel")
        assert response.status_code == 200, response.text

    def delete(self, task_id: str, client: httpx.Client | None = None) -> None:
        response = (client or self.user).delete(f"/task/{task_id}")
        assert response.status_code == 200, response.text

    def succeed(self, output: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """A new task, claimed and completed; the complete response."""
        task = self.create(**fields)
        self.claim(task["task_id"])
        return self.complete(task["task_id"], output or chunkr_output(text=TEXT))

    def story(self) -> Story:
        """create -> claim -> succeed -> update (target_length 7) -> cancel the update."""
        output = chunkr_output(text=TEXT)
        created = self.create(expires_in=3600)
        task_id = created["task_id"]
        claimed = self.claim(task_id)
        succeeded = self.complete(task_id, output)
        response = self.user.patch(
            f"/task/{task_id}/parse", json={"chunk_processing": {"target_length": 7}}
        )
        assert response.status_code == 200, response.text
        updated = response.json()
        self.cancel(task_id)
        return Story(task_id, created, claimed, succeeded, updated, output)


# -- concurrent writers -----------------------------------------------------------------------


@dataclass
class Burst:
    """Writer threads creating and cancelling tasks over HTTP, one key each; once every writer
    is done, one marker task (file_name ``marker``) is created with the admin key, so a reader
    knows it has seen the end. With ``tasks_per_writer=None`` the writers go on until
    ``stop`` is set."""

    server: Server | InProcessServer
    keys: list[str]
    admin_key: str
    tasks_per_writer: int | None = 50
    stop: threading.Event = field(default_factory=threading.Event)
    #: Each writer waits here (if set) before its last task.
    gate: threading.Event | None = None
    marker: str = field(default_factory=lambda: f"marker-{uuid.uuid4().hex[:8]}.txt")
    created: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    marker_task: str | None = None

    def start(self) -> Burst:
        self._threads = [
            threading.Thread(target=self._write, args=(i, key), daemon=True)
            for i, key in enumerate(self.keys)
        ]
        for thread in self._threads:
            thread.start()
        self._closer = threading.Thread(target=self._close, daemon=True)
        self._closer.start()
        return self

    def _write(self, index: int, key: str) -> None:
        mine = self.created.setdefault(f"writer-{index}", [])
        try:
            with self.server.client(key) as client:
                n = 0
                while n != self.tasks_per_writer and not self.stop.is_set():
                    if self.gate is not None and n == self.tasks_per_writer - 1:
                        self.gate.wait(30)
                    n += 1
                    response = client.post("/task/parse", json={"file": FILE, "file_name": "b.txt"})
                    assert response.status_code == 200, response.text
                    task_id = response.json()["task_id"]
                    mine.append(task_id)
                    response = client.get(f"/task/{task_id}/cancel")
                    assert response.status_code == 200, response.text
        except Exception as exc:
            self.errors.append(f"writer {index}: {exc!r}")

    def _close(self) -> None:
        for thread in self._threads:
            thread.join()
        try:
            with self.server.client(self.admin_key) as client:
                response = client.post("/task/parse", json={"file": FILE, "file_name": self.marker})
                assert response.status_code == 200, response.text
                self.marker_task = response.json()["task_id"]
        except Exception as exc:
            self.errors.append(f"marker: {exc!r}")
        self.done.set()

    def wait(self, timeout: float = 60) -> None:
        assert self.done.wait(timeout), "the writers did not finish in time"
        assert not self.errors, self.errors

    def tasks_of(self, *writers: int) -> set[str]:
        return {t for i in writers for t in self.created.get(f"writer-{i}", [])}

    def is_marker(self, event: dict[str, Any]) -> bool:
        return event["type"] == "task_created" and event["data"].get("file_name") == self.marker
