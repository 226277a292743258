"""Shared pieces of the reliability suite: keys made straight in the database, read-only looks
at the ledger file, ``taskledger verify``, an in-process server (for the disk-trouble tests,
which need the server's own SQLite connection), and a small load generator that records every
acknowledged write.

Every wait is a poll with a generous deadline; a deadline that runs out fails the test with
what was last seen, never hangs it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

# Keys are written straight into the database (``taskledger keys`` without a subprocess per key);
# tests/inprocess.py holds the one copy of that code.
from tests.inprocess import add_key, revoke_key  # noqa: F401 - for the test modules
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: Set TASKLEDGER_SOAK=1 for the long variants (more threads, more rounds, more examples).
SOAK = os.environ.get("TASKLEDGER_SOAK") == "1"

FILE = base64.b64encode(b"hello reliability\n").decode()


# -- the database file ------------------------------------------------------------------------


revoke = revoke_key


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the ledger file, read-only (another process's view, as an auditor's)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def event_types(db: Path, task_id: str) -> list[str]:
    rows = query(
        db, "SELECT type FROM events WHERE stream_id = ? ORDER BY version", (f"task-{task_id}",)
    )
    return [r[0] for r in rows]


def event_count(db: Path) -> int:
    return query(db, "SELECT count(*) FROM events")[0][0]


def verify(db: Path) -> subprocess.CompletedProcess:
    """``taskledger verify --db DB`` (through the console entry point's ``main``)."""
    return subprocess.run(
        [sys.executable, "-c", "from scripts.cli import main; main()", "verify", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,  # the caller reads the exit code
    )


def assert_log_sound(db: Path) -> None:
    """Positions unique and strictly increasing in commit order, every stream's versions
    gapless from 1, and ``taskledger verify`` (projections and hash chain) clean."""
    rows = query(db, "SELECT position, stream_id, version FROM events ORDER BY rowid")
    positions = [r[0] for r in rows]
    assert len(positions) == len(set(positions)), "a position was handed out twice"
    assert positions == sorted(positions), "positions are not increasing in insertion order"
    versions: dict[str, list[int]] = {}
    for _, stream, version in rows:
        versions.setdefault(stream, []).append(version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"{stream} versions are not gapless: {seen}"
    result = verify(db)
    assert result.returncode == 0, result.stdout + result.stderr


# -- an in-process server -----------------------------------------------------------------------


class InProcessServer:
    """``create_app(settings)`` served by uvicorn in a background thread of the test process, on
    a free 127.0.0.1 port; ``service`` is the running app's TaskLedger (its store, its writer
    connection)."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from api.app import create_app
        from tests.server import free_port

        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v1"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> InProcessServer:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="uvicorn to start")
        return self

    @property
    def service(self) -> Any:
        return self.app.state.service

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": key} if key else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=30)


# -- load with a record of what was acknowledged ----------------------------------------------


@dataclass
class Acks:
    """Every write a client was told succeeded (a 2xx), by kind."""

    created: dict[str, str] = field(default_factory=dict)  # task_id -> owner key label
    cancelled: set[str] = field(default_factory=set)
    claimed: dict[str, str] = field(default_factory=dict)  # task_id -> worker_id
    sent: int = 0
    refused: int = 0  # clean 4xx answers (lost races)
    failed: int = 0  # no answer (connection dropped: the server was killed)
    errors: list[str] = field(default_factory=list)  # answers no write may get (5xx, ...)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return len(self.created) + len(self.cancelled) + len(self.claimed)


def load_thread(
    urls: list[str],
    user_key: str,
    worker_key: str,
    acks: Acks,
    stop: threading.Event,
    *,
    name: str,
    seed: int,
    max_ops: int | None = None,
) -> threading.Thread:
    """A client thread that keeps creating tasks, cancelling some it created and claiming
    others, spread over ``urls`` (one server, or several processes on one database), until
    ``stop`` is set. Each 2xx is recorded in ``acks`` before the next request is sent."""

    def run() -> None:
        rng = random.Random(seed)
        users = [
            httpx.Client(base_url=u, headers={"Authorization": user_key}, timeout=10) for u in urls
        ]
        workers = [
            httpx.Client(base_url=u, headers={"Authorization": worker_key}, timeout=10)
            for u in urls
        ]
        mine: list[str] = []
        ops = 0
        try:
            while not stop.is_set() and (max_ops is None or ops < max_ops):
                ops += 1
                roll = rng.random()
                user, worker = rng.choice(users), rng.choice(workers)
                try:
                    if roll < 0.5 or not mine:
                        with acks.lock:
                            acks.sent += 1
                        response = user.post(
                            "/task/parse", json={"file": FILE, "file_name": f"{name}.txt"}
                        )
                        if response.status_code == 200:
                            task_id = response.json()["task_id"]
                            with acks.lock:
                                acks.created[task_id] = name
                            mine.append(task_id)
                            continue
                    elif roll < 0.75:
                        task_id = mine.pop(rng.randrange(len(mine)))
                        with acks.lock:
                            acks.sent += 1
                        response = user.get(f"/task/{task_id}/cancel")
                        if response.status_code == 200:
                            with acks.lock:
                                acks.cancelled.add(task_id)
                            continue
                    else:
                        worker_id = f"{name}-w{ops}"
                        with acks.lock:
                            acks.sent += 1
                        response = worker.post(
                            "/worker/claim", json={"worker_id": worker_id, "lease_seconds": 3600}
                        )
                        if response.status_code == 200:
                            with acks.lock:
                                acks.claimed[response.json()["task_id"]] = worker_id
                            continue
                        if response.status_code == 204:
                            continue
                    if 400 <= response.status_code < 500:
                        with acks.lock:
                            acks.refused += 1
                    else:
                        with acks.lock:
                            acks.errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.TransportError:
                    with acks.lock:
                        acks.failed += 1
                    if stop.is_set():
                        return
                    time.sleep(0.05)
        finally:
            for client in users + workers:
                client.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    return thread


def history(db: Path) -> dict[str, list[tuple[str, dict]]]:
    streams: dict[str, list[tuple[str, dict]]] = {}
    for stream_id, type_, data in query(
        db, "SELECT stream_id, type, data FROM events ORDER BY stream_id, version"
    ):
        streams.setdefault(stream_id.removeprefix("task-"), []).append((type_, json.loads(data)))
    return streams


def survivors(db: Path, acks: Acks) -> tuple[int, list[str]]:
    """How many acknowledged writes the database holds, and a description of each one missing."""
    streams = history(db)
    statuses = dict(query(db, "SELECT task_id, status FROM tasks"))
    missing: list[str] = []
    found = 0
    for task_id in acks.created:
        if streams.get(task_id, [("", {})])[0][0] == "task_created" and task_id in statuses:
            found += 1
        else:
            missing.append(f"created {task_id}")
    for task_id in acks.cancelled:
        if (
            "cancelled" in [t for t, _ in streams.get(task_id, [])]
            and statuses.get(task_id) == "Cancelled"
        ):
            found += 1
        else:
            missing.append(f"cancelled {task_id}: {streams.get(task_id)}")
    for task_id, worker_id in acks.claimed.items():
        claims = [d for t, d in streams.get(task_id, []) if t == "claimed"]
        if any(d["worker_id"] == worker_id for d in claims):
            found += 1
        else:
            missing.append(f"claimed {task_id} by {worker_id}: {streams.get(task_id)}")
    return found, missing


def assert_one_outcome(db: Path) -> None:
    """No task's history holds both a cancel and a claim: the two decide the same question."""
    for task_id, events in history(db).items():
        types = [t for t, _ in events]
        assert not ("cancelled" in types and "claimed" in types), (task_id, types)


def new_id() -> str:
    return str(uuid.uuid4())


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
