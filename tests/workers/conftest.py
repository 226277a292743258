"""Fixtures for the worker tests: real ``taskledger serve`` processes with keys (or, for tests
that need no server process, the API served in the test process: tests/inprocess.py), real
``taskledger worker`` subprocesses, and read-only looks into the ledger's SQLite file.

Every wait is a poll with a generous deadline (the suite runs on small, shared machines); a
deadline that runs out fails the test with what was last seen, never hangs it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.inprocess import InProcessServer
from tests.server import Server
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class Ledger:
    """A running server, one user key (owner alice) and one worker key, and helpers."""

    def __init__(self, server: Server | InProcessServer, user_key: str, worker_key: str) -> None:
        self.server = server
        self.db = server.db
        self.url = server.url
        self.api = server.api
        self.user_key = user_key
        self.worker_key = worker_key
        self.user = server.client(user_key)
        self.worker = server.client(worker_key)

    wait_for = staticmethod(wait_for)

    def close(self) -> None:
        self.user.close()
        self.worker.close()

    # -- the ledger file, read-only ----------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def history(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The task's events, (type, data), in stream order."""
        rows = self.query(
            "SELECT type, data FROM events WHERE stream_id = ? ORDER BY version",
            (f"task-{task_id}",),
        )
        return [(type_, json.loads(data)) for type_, data in rows]

    def types(self, task_id: str) -> list[str]:
        return [type_ for type_, _ in self.history(task_id)]

    def event_count(self) -> int:
        return self.query("SELECT count(*) FROM events")[0][0]

    # -- HTTP --------------------------------------------------------------------------------

    def create(
        self, content: bytes, file_name: str | None = "input.txt", **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"file": base64.b64encode(content).decode(), **fields}
        if file_name is not None:
            body["file_name"] = file_name
        response = self.user.post("/task/parse", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, task_id: str) -> httpx.Response:
        return self.user.get(f"/task/{task_id}")

    def status(self, task_id: str) -> str | None:
        response = self.get(task_id)
        return response.json()["status"] if response.status_code == 200 else None

    def wait_status(self, task_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            response = self.get(task_id)
            if response.status_code == 200 and response.json()["status"] in statuses:
                return response.json()
            return None

        return wait_for(seen, timeout=timeout, what=f"task {task_id} to be {statuses}")

    def claim(self, worker_id: str, **fields: Any) -> httpx.Response:
        return self.worker.post("/worker/claim", json={"worker_id": worker_id, **fields})


def cli_key(db: Path, owner: str, role: str) -> str:
    """A key made by ``taskledger keys create`` (run in-process: a subprocess per key costs a
    second on a busy machine). The key is the last line of stdout."""
    from click.testing import CliRunner

    from scripts.cli import cli

    result = CliRunner().invoke(
        cli, ["keys", "create", "--db", str(db), "--owner", owner, "--role", role]
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


class LedgerFactory:
    """``factory(*serve_flags)`` with a real server; with ``in_process``,
    ``factory(**settings)`` (``api.settings.Settings`` fields, e.g. ``sweep_interval=0.2`` for
    ``--sweep-interval 0.2``)."""

    def __init__(
        self, tmp_path_factory: pytest.TempPathFactory, *, in_process: bool = False
    ) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.in_process = in_process
        self.started: list[Ledger] = []

    def __call__(self, *flags: str, **settings: Any) -> Ledger:
        db = self.tmp_path_factory.mktemp("ledger") / "ledger.db"
        user_key, worker_key = cli_key(db, "alice", "user"), cli_key(db, "pool", "worker")
        if self.in_process:
            assert not flags, "the in-process server takes Settings fields, not serve's flags"
            server: Server | InProcessServer = InProcessServer(db, **settings).start()
        else:
            assert not settings, "a real server takes serve's flags"
            server = Server(db, *flags).start()
        ledger = Ledger(server, user_key, worker_key)
        self.started.append(ledger)
        return ledger

    def close(self) -> None:
        for ledger in self.started:
            ledger.close()
            if isinstance(ledger.server, Server):
                # SIGKILL, not SIGTERM: a graceful stop would wait for open long polls to run out.
                ledger.server.kill()
            ledger.server.stop()


@pytest.fixture
def make_ledger(tmp_path_factory):
    """``make_ledger(*serve_flags)``: a fresh ``taskledger serve`` over its own database, with a
    user key (owner alice) and a worker key. Stopped when the test ends."""
    factory = LedgerFactory(tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def make_module_ledger(tmp_path_factory):
    """As ``make_ledger``, for a server shared by the tests of one module."""
    factory = LedgerFactory(tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture
def make_ledger_in_process(tmp_path_factory):
    """``make_ledger_in_process(**settings)``: as ``make_ledger``, with the API served in this
    process (no ``taskledger serve``; no worker process can reach it: it has no socket)."""
    factory = LedgerFactory(tmp_path_factory, in_process=True)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def make_module_ledger_in_process(tmp_path_factory):
    """As ``make_ledger_in_process``, for a server shared by the tests of one module."""
    factory = LedgerFactory(tmp_path_factory, in_process=True)
    yield factory
    factory.close()


class WorkerProcess:
    """A ``taskledger worker`` subprocess; its stderr (JSON log lines) goes to a file."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, log_file: Any) -> None:
        self.proc = proc
        self.log_path = log_path
        self._log_file = log_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log_file.close()


@pytest.fixture
def spawn_worker(tmp_path):
    """``spawn_worker(ledger, *flags, pythonpath=[dirs])``: a real reference worker process
    (``python -m scripts.cli worker --url ... --key <worker key> ...``). Killed after the test if
    it is still running."""
    started: list[WorkerProcess] = []

    def spawn(ledger: Ledger, *flags: str, pythonpath: list[Path] = ()) -> WorkerProcess:
        paths = [str(p) for p in pythonpath] + [str(ROOT)]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
        log_path = tmp_path / f"worker-{len(started)}.log"
        log_file = open(log_path, "ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.cli",
                "worker",
                "--url",
                ledger.url,
                "--key",
                ledger.worker_key,
                "--log-json",
                *flags,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        worker = WorkerProcess(proc, log_path, log_file)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture
def processor_module(tmp_path):
    """``processor_module(name, sleep_seconds)``: writes ``<tmp>/<name>.py`` with a processor
    ``process`` that sleeps, then does what the reference processor does. Returns the
    ``--processor`` spec; pass ``pythonpath=[tmp_path]`` to spawn_worker."""

    def write(name: str, sleep_seconds: float) -> str:
        (tmp_path / f"{name}.py").write_text(
            "import time\n"
            "from scripts.processors import text_chunks\n\n\n"
            "def process(data, file_name, configuration):\n"
            f"    time.sleep({sleep_seconds!r})\n"
            "    return text_chunks(data, file_name, configuration)\n"
        )
        return f"{name}:process"

    return write
