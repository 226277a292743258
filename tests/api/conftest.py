"""Fixtures for the HTTP tests: clients per key, task creation, and a direct handle on the ledger
(to drive tasks through the worker side, and to count what the log holds)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.composition import Store
from ledger.commands import ClaimTask, CompleteTask, FailTask
from ledger.events import blob_ref
from ledger.log import Actor, Envelope, stream_id_for
from tests.pg import execute
from tests.support import chunkr_output

FILE = base64.b64encode(b"hello, ledger\n").decode()


class Ledger:
    """The server's database, opened from the test process as a worker would: a ``Store`` of
    its own on the same database (its own connections; it takes its turn to write, as another
    process does: through the SQLite file's write lock, or PostgreSQL's), plus raw SQL counts.
    ``db`` is the SQLite file's path or the PostgreSQL URL (``server.db``)."""

    def __init__(self, db: Path | str) -> None:
        self.db = db
        self.store = Store(db)

    def close(self) -> None:
        self.store.close()

    def succeed(
        self, task_id: str, output: dict[str, Any] | None = None, *, file_name: str = "a.txt"
    ) -> dict[str, Any]:
        """Claim then complete the task as worker ``w-test``; returns the output stored."""
        output = output if output is not None else chunkr_output(file_name)
        data = json.dumps(output).encode()
        now = datetime.now(UTC)
        envelope = Envelope(recorded_at=now, actor=Actor(key_id=None, role="worker"))
        self.store.handler.execute(
            ClaimTask(
                task_id=task_id, at=now, worker_id="w-test", lease_until=now + timedelta(minutes=5)
            ),
            envelope,
        )
        self.store.handler.execute(
            CompleteTask(task_id=task_id, at=now, worker_id="w-test", output=blob_ref(data)),
            envelope,
            blobs=[data],
        )
        return output

    def fail(self, task_id: str, error: str = "the parser broke") -> None:
        """Claim then fail the task as worker ``w-test``."""
        now = datetime.now(UTC)
        envelope = Envelope(recorded_at=now, actor=Actor(key_id=None, role="worker"))
        self.store.handler.execute(
            ClaimTask(
                task_id=task_id, at=now, worker_id="w-test", lease_until=now + timedelta(minutes=5)
            ),
            envelope,
        )
        self.store.handler.execute(
            FailTask(task_id=task_id, at=now, worker_id="w-test", error=error), envelope
        )

    def version(self, task_id: str) -> int:
        state = self.store.state(task_id)
        return state.version if state is not None else 0

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Rows of ``sql`` (portable SQL, ``?`` for each parameter) on a connection of its own,
        on either backend."""
        return execute(self.db, sql, *params)

    def tables(self) -> list[str]:
        """The names of the ledger's tables (on PostgreSQL, those of the URL's schema)."""
        if isinstance(self.db, str):
            sql = (
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return sorted(row[0] for row in self.query(sql))

    def count(self, table: str = "events") -> int:
        return self.query(f"SELECT count(*) FROM {table}")[0][0]

    def event_types(self, task_id: str) -> list[str]:
        rows = self.query(
            "SELECT type FROM events WHERE stream_id = ? ORDER BY version", stream_id_for(task_id)
        )
        return [r[0] for r in rows]

    def count_type(self, event_type: str, idempotency_key: str | None = None) -> int:
        if idempotency_key is None:
            return self.query("SELECT count(*) FROM events WHERE type = ?", event_type)[0][0]
        return self.query(
            "SELECT count(*) FROM events WHERE type = ? AND idempotency_key = ?",
            event_type,
            idempotency_key,
        )[0][0]


@pytest.fixture(scope="module")
def ledger(server) -> Iterator[Ledger]:
    handle = Ledger(server.db)
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def alice(server, user_keys) -> Iterator[httpx.Client]:
    with server.client(user_keys["alice"]) as client:
        yield client


@pytest.fixture(scope="module")
def bob(server, user_keys) -> Iterator[httpx.Client]:
    with server.client(user_keys["bob"]) as client:
        yield client


@pytest.fixture(scope="module")
def admin(server, user_keys) -> Iterator[httpx.Client]:
    with server.client(user_keys["admin"]) as client:
        yield client


@pytest.fixture(scope="module")
def create() -> Callable[..., dict[str, Any]]:
    """``create(client, **fields)``: POST /task/parse with a small text file; the Task JSON."""

    def make(client: httpx.Client, **fields: Any) -> dict[str, Any]:
        body = {"file": FILE, "file_name": "a.txt", **fields}
        response = client.post("/task/parse", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    return make


@pytest.fixture(scope="module")
def fresh_user(server) -> Callable[[], str]:
    """A key for a brand-new owner (nothing else in the module can add tasks to its list)."""
    from tests.inprocess import add_key

    def make() -> str:
        return add_key(server.db, f"owner-{uuid.uuid4().hex[:8]}")

    return make
