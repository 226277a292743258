"""``taskledger bench``: one run, on 127.0.0.1, bounded in time, that measures taskledger side by
side with a floor (one SQLite row per request) and a peer (the ``eventsourcing`` library), and
writes every figure with its conditions to JSON and Markdown.

1. HTTP: ``taskledger serve`` on a fresh database driven by 1 and 32 concurrent keep-alive
   clients: create, get, cancel, claim+complete (as two requests, and as one complete that
   claims the worker's next task with ``claim_next``), list.
2. The same load on the floor app (``scripts.bench_floor``) and the peer app
   (``scripts.bench_peer``), same Litestar/uvicorn settings.
   Every server runs once as one process and, at the highest concurrency, once more with
   ``--workers 2`` (uvicorn's worker processes; taskledger's ``serve --workers 2``). A ratio
   target compares taskledger with a reference app at the same number of processes (the same
   settings), for each number run; the target's value is the best of those ratios and its
   basis lists every one.
3. In-process: append events/s, replay (fold) events/s, verify and rebuild on a log of N events
   (1,000,000 by default), the peer reading its own notification log, and GET p50/p99 at 10,000
   vs N events.
4. The server's peak RSS with N events in the log.

The load generator is a small asyncio HTTP/1.1 client (one keep-alive connection per simulated
client) running in this process, so every server is driven by the same client code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from scripts.options import DatabaseParam

ROOT = Path(__file__).resolve().parent.parent

# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PATCH", "PUT"):
            lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


@dataclass
class Stats:
    route: str
    target: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

        return {
            "target": self.target,
            "route": self.route,
            "concurrency": self.concurrency,
            "requests": len(self.latencies),
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(len(self.latencies) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        }


Op = Callable[[Connection], Awaitable[bool]]


async def drive(
    host: str,
    port: int | list[int],
    op: Op,
    *,
    concurrency: int,
    seconds: float,
    max_ops: int | None,
    stats: Stats,
) -> Stats:
    """Run ``op`` from ``concurrency`` clients until ``seconds`` pass or ``max_ops`` are done.
    With several ports (several servers on one database) the clients are dealt out among them in
    turn, so the load is split evenly."""
    deadline = time.perf_counter() + seconds
    budget = [max_ops if max_ops is not None else 1 << 62]
    ports = [port] if isinstance(port, int) else port

    async def client(n: int) -> None:
        conn = Connection(host, ports[n % len(ports)])
        try:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                ok = await op(conn)
                if ok:
                    stats.latencies.append(time.perf_counter() - started)
                else:
                    stats.errors += 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    stats.seconds = time.perf_counter() - started
    return stats


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(
        self,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        workers: int = 1,
    ) -> None:
        self.port = port
        self.workers = workers
        self.log = open(log or os.devnull, "ab")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    # The port is bound before uvicorn's workers are up: wait for an answer.
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if not s.recv(16).startswith(b"HTTP/1.1"):
                        raise OSError("no answer yet")
                if self.workers > 1:
                    time.sleep(1.0)  # the first worker answered; let the others come up
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory of the server: its process and, with workers, theirs, summed."""
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(pid) for pid in children.split()]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return round(total / 1024, 1) if total else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def start_taskledger(
    db: Path | str,
    *,
    synchronous: str = "FULL",
    log: Path | None = None,
    workers: int = 1,
    serve_args: tuple[str, ...] = (),
) -> tuple[Process, str]:
    """``taskledger serve`` on ``db`` (a SQLite file, or a postgresql:// URL) and its admin key.
    On PostgreSQL the key is made with ``taskledger keys create`` before the server starts (so
    no key file lands in the working directory, and several servers can share the database)."""
    postgres = isinstance(db, str)
    key = make_key(db, "bench-admin", "admin") if postgres else ""
    port = free_port()
    proc = Process(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "serve",
            "--db",
            str(db),
            "--port",
            str(port),
            "--synchronous",
            synchronous,
            "--log-json",
            "--workers",
            str(workers),
            *serve_args,
        ],
        port,
        log=log,
        workers=workers,
    )
    if postgres:
        return proc, key
    # A new database's admin key: serve leaves it in <db>.admin-key (0600) when its stderr is
    # not a terminal, as here.
    assert isinstance(db, Path)
    key_file = db.with_name(db.name + ".admin-key")
    key = key_file.read_text().strip() if key_file.exists() else ""
    return proc, key


def start_uvicorn(factory: str, db: Path | str, workers: int = 1) -> Process:
    port = free_port()
    return Process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(workers),
        ],
        port,
        env={"BENCH_DB": str(db)},
        workers=workers,
    )


def make_key(db: Path | str, owner: str, role: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "keys",
            "create",
            "--db",
            str(db),
            "--owner",
            owner,
            "--role",
            role,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return out.strip().splitlines()[-1]


FILE_B64 = base64.b64encode(b"benchmark input " * 16).decode()
OUTPUT = {
    "chunks": [
        {
            "chunk_id": "c1",
            "chunk_length": 2,
            "segments": [
                {
                    "bbox": {"left": 0, "top": 0, "width": 1, "height": 1},
                    "page_height": 1,
                    "page_width": 1,
                    "page_number": 1,
                    "segment_id": "s1",
                    "segment_type": "Text",
                    "confidence": None,
                    "content": "benchmark input",
                }
            ],
        }
    ],
    "file_name": "bench.txt",
    "page_count": 1,
    "pdf_url": None,
}


# -- HTTP scenarios --------------------------------------------------------------------------------


def run_async(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def http_taskledger(
    seconds: float,
    concurrencies: list[int],
    work: Path,
    workers: int = 1,
    serve_args: tuple[str, ...] = (),
    create_and_get_only: bool = False,
    *,
    db: str | None = None,
    nodes: int = 1,
) -> tuple[list[dict], dict]:
    """taskledger's routes under load (only create and get with ``create_and_get_only``),
    served with ``taskledger serve ... *serve_args``: on a fresh SQLite file in ``work``, or on
    the PostgreSQL database ``db`` (a URL), with ``nodes`` servers on it, each on its own port
    and the clients split among them."""
    if db is None:
        db_or_file: Path | str = work / f"taskledger-http-{workers}.db"
        proc, admin = start_taskledger(db_or_file, workers=workers, serve_args=serve_args)
        procs = [proc]
    else:
        db_or_file, admin, procs = db, "", []
        try:
            for _ in range(nodes):
                proc, key = start_taskledger(db, workers=workers, serve_args=serve_args)
                procs.append(proc)
                admin = admin or key
        except BaseException:
            for started in procs:
                started.stop()
            raise
    worker_key = make_key(db_or_file, "pool", "worker")
    user = {"Authorization": admin}
    worker = {"Authorization": worker_key}
    results: list[dict] = []
    create_body = json.dumps({"file": FILE_B64, "file_name": "bench.txt"}).encode()
    port: int | list[int] = procs[0].port if len(procs) == 1 else [p.port for p in procs]
    ids: list[str] = []

    async def create(conn: Connection) -> bool:
        status, body = await conn.request("POST", "/api/v1/task/parse", create_body, user)
        if status == 200:
            ids.append(json.loads(body)["task_id"])
        return status == 200

    async def get(conn: Connection) -> bool:
        status, _ = await conn.request("GET", f"/api/v1/task/{random.choice(ids)}", headers=user)
        return status == 200

    async def listing(conn: Connection) -> bool:
        status, _ = await conn.request("GET", "/api/v1/tasks?limit=10", headers=user)
        return status == 200

    def timed(op: Op, route: str, concurrency: int, max_ops: int | None = None) -> None:
        """One timed scenario; on PostgreSQL also the write transactions it committed."""
        with write_transactions(db) as counted:
            stats = run_async(
                drive(
                    "127.0.0.1",
                    port,
                    op,
                    concurrency=concurrency,
                    seconds=seconds,
                    max_ops=max_ops,
                    stats=Stats(route, "taskledger", concurrency),
                )
            )
        results.append({**stats.summary(), **counted})

    try:
        for concurrency in concurrencies:
            timed(create, "create", concurrency)
            timed(get, "get", concurrency)
            if create_and_get_only:
                continue
            # Cancel and claim each need fresh Starting tasks: queue them up untimed first.
            pending = list(reversed(ids))
            ids_for_cancel = pending[: len(pending) // 2]
            claimable = len(pending) - len(ids_for_cancel)
            ids.clear()

            async def cancel(conn: Connection) -> bool:
                if not ids_for_cancel:
                    return False
                task_id = ids_for_cancel.pop()
                status, _ = await conn.request(
                    "GET", f"/api/v1/task/{task_id}/cancel", headers=user
                )
                return status == 200

            timed(cancel, "cancel", concurrency, len(ids_for_cancel))

            complete_body_for: dict[str, bytes] = {}

            async def claim_complete(conn: Connection) -> bool:
                wid = f"w{id(conn)}"
                status, body = await conn.request(
                    "POST", "/api/v1/worker/claim", json.dumps({"worker_id": wid}).encode(), worker
                )
                if status != 200:
                    return False
                task_id = json.loads(body)["task_id"]
                payload = complete_body_for.setdefault(
                    wid, json.dumps({"worker_id": wid, "output": OUTPUT}).encode()
                )
                status, _ = await conn.request(
                    "POST", f"/api/v1/task/{task_id}/complete", payload, worker
                )
                return status == 200

            timed(claim_complete, "claim+complete", concurrency, claimable)

            # The same cycle as a worker that asks complete to claim its next task (one request
            # per task instead of two). Untimed: queue up fresh tasks for it first.
            run_async(
                drive(
                    "127.0.0.1",
                    port,
                    create,
                    concurrency=concurrency,
                    seconds=seconds,
                    max_ops=None,
                    stats=Stats("refill", "taskledger", concurrency),
                )
            )
            queued = len(ids)
            ids.clear()
            holding: dict[int, str] = {}

            async def complete_claim_next(conn: Connection) -> bool:
                wid = f"w{id(conn)}"
                task_id = holding.pop(id(conn), None)
                if task_id is None:
                    status, body = await conn.request(
                        "POST",
                        "/api/v1/worker/claim",
                        json.dumps({"worker_id": wid}).encode(),
                        worker,
                    )
                    if status != 200:
                        return False
                    task_id = json.loads(body)["task_id"]
                payload = json.dumps(
                    {"worker_id": wid, "output": OUTPUT, "claim_next": True}
                ).encode()
                status, body = await conn.request(
                    "POST", f"/api/v1/task/{task_id}/complete", payload, worker
                )
                if status != 200:
                    return False
                following = json.loads(body)["next"]
                if following is not None:
                    holding[id(conn)] = following["task_id"]
                return True

            timed(
                complete_claim_next,
                "claim+complete (claim_next)",
                concurrency,
                max(0, queued - concurrency),
            )
            timed(listing, "list", concurrency)
            # Refill ids for the next round's get.
            run_async(
                drive(
                    "127.0.0.1",
                    port,
                    create,
                    concurrency=8,
                    seconds=seconds,
                    max_ops=200,
                    stats=Stats("refill", "taskledger", 8),
                )
            )
    finally:
        peaks = [p.peak_rss_mb() for p in procs]
        for p in procs:
            p.stop()
    rss = round(sum(peak or 0 for peak in peaks), 1) or None
    return with_workers(results, workers * len(procs)), {"peak_rss_mb": rss}


@contextmanager
def write_transactions(db: str | None) -> Iterator[dict[str, Any]]:
    """On a PostgreSQL ledger (``db`` a URL), count the write transactions that append while
    the block runs, and the events they append: every such transaction (one group-commit batch
    of a node) sends one NOTIFY on the ledger's channel at its commit, which a connection of
    this process LISTENs to. The dict yielded is filled in when the block ends: ``batches``,
    ``events``. On SQLite (``db`` None) it stays empty."""
    counted: dict[str, Any] = {}
    if db is None:
        yield counted
        return
    import psycopg

    from ledger.postgres.connection import channel_name

    conn = psycopg.connect(db, autocommit=True)
    stop = threading.Event()
    seen = [0]

    def last_position() -> int:
        row = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
        return int(row[0]) if row else 0

    def listen() -> None:
        while not stop.is_set():
            seen[0] += sum(1 for _ in conn.notifies(timeout=0.1))

    try:
        schema = (conn.execute("SELECT current_schema()").fetchone() or ("public",))[0]
        before = last_position()
        conn.execute(f'LISTEN "{channel_name(schema)}"')
        listener = threading.Thread(target=listen, name="bench-listen", daemon=True)
        listener.start()
        try:
            yield counted
        finally:
            time.sleep(0.3)  # the last commits' notifications
            stop.set()
            listener.join()
        conn.execute("UNLISTEN *")
        counted["batches"] = seen[0]
        counted["events"] = last_position() - before
    finally:
        conn.close()


def with_workers(rows: list[dict], workers: int) -> list[dict]:
    for row in rows:
        row["processes"] = workers
    return rows


#: The floor's insert route as the report names it, on each backend.
FLOOR_INSERT = "insert (NORMAL)"
FLOOR_INSERT_PG = "insert (synchronous_commit=on)"


def http_floor(
    seconds: float,
    concurrencies: list[int],
    work: Path,
    workers: int = 1,
    *,
    db: str | None = None,
) -> list[dict]:
    """The floor under load: on a fresh SQLite file in ``work``, or on the PostgreSQL database
    ``db`` (a URL; its PostgreSQL app, ``scripts.bench_floor:create_postgres_app``)."""
    if db is None:
        proc = start_uvicorn(
            "scripts.bench_floor:create_app", work / f"floor-{workers}.db", workers
        )
        insert_route = FLOOR_INSERT
    else:
        proc = start_uvicorn("scripts.bench_floor:create_postgres_app", db, workers)
        insert_route = FLOOR_INSERT_PG
    body = json.dumps({"file": FILE_B64, "file_name": "bench.txt"}).encode()
    ids: list[str] = []

    async def insert(conn: Connection) -> bool:
        status, payload = await conn.request("POST", "/rows", body)
        if status == 200:
            ids.append(json.loads(payload)["id"])
        return status == 200

    async def read(conn: Connection) -> bool:
        status, _ = await conn.request("GET", f"/rows/{random.choice(ids)}")
        return status == 200

    results = []
    try:
        for concurrency in concurrencies:
            results.append(
                run_async(
                    drive(
                        "127.0.0.1",
                        proc.port,
                        insert,
                        concurrency=concurrency,
                        seconds=seconds,
                        max_ops=None,
                        stats=Stats(insert_route, "floor", concurrency),
                    )
                ).summary()
            )
            results.append(
                run_async(
                    drive(
                        "127.0.0.1",
                        proc.port,
                        read,
                        concurrency=concurrency,
                        seconds=seconds,
                        max_ops=None,
                        stats=Stats("read one row", "floor", concurrency),
                    )
                ).summary()
            )
    finally:
        proc.stop()
    return with_workers(results, workers)


def http_peer(
    seconds: float,
    concurrencies: list[int],
    work: Path,
    workers: int = 1,
    *,
    db: str | None = None,
) -> list[dict]:
    """The peer under load: with eventsourcing's SQLite persistence on a fresh file in
    ``work``, or its PostgreSQL persistence on the database ``db`` (a URL)."""
    proc = start_uvicorn(
        "scripts.bench_peer:create_app", db or work / f"peer-{workers}.db", workers
    )
    body = json.dumps({"file": FILE_B64, "file_name": "bench.txt"}).encode()
    ids: list[str] = []

    async def create(conn: Connection) -> bool:
        status, payload = await conn.request("POST", "/tasks", body)
        if status == 200:
            ids.append(json.loads(payload)["task_id"])
        return status == 200

    async def get(conn: Connection) -> bool:
        status, _ = await conn.request("GET", f"/tasks/{random.choice(ids)}")
        return status == 200

    results = []
    try:
        for concurrency in concurrencies:
            results.append(
                run_async(
                    drive(
                        "127.0.0.1",
                        proc.port,
                        create,
                        concurrency=concurrency,
                        seconds=seconds,
                        max_ops=None,
                        stats=Stats("create", "eventsourcing", concurrency),
                    )
                ).summary()
            )
            results.append(
                run_async(
                    drive(
                        "127.0.0.1",
                        proc.port,
                        get,
                        concurrency=concurrency,
                        seconds=seconds,
                        max_ops=None,
                        stats=Stats("get", "eventsourcing", concurrency),
                    )
                ).summary()
            )
            pending = list(reversed(ids))
            to_cancel, to_claim = pending[::2], pending[1::2]
            ids.clear()

            def take(pool: list[str], action: str) -> Op:
                async def op(conn: Connection) -> bool:
                    if not pool:
                        return False
                    status, _ = await conn.request("POST", f"/tasks/{pool.pop()}/{action}")
                    return status == 200

                return op

            results.append(
                run_async(
                    drive(
                        "127.0.0.1",
                        proc.port,
                        take(to_cancel, "cancel"),
                        concurrency=concurrency,
                        seconds=seconds,
                        max_ops=len(to_cancel),
                        stats=Stats("cancel", "eventsourcing", concurrency),
                    )
                ).summary()
            )
            results.append(
                run_async(
                    drive(
                        "127.0.0.1",
                        proc.port,
                        take(to_claim, "claim"),
                        concurrency=concurrency,
                        seconds=seconds,
                        max_ops=len(to_claim),
                        stats=Stats("claim", "eventsourcing", concurrency),
                    )
                ).summary()
            )
            run_async(
                drive(
                    "127.0.0.1",
                    proc.port,
                    create,
                    concurrency=8,
                    seconds=seconds,
                    max_ops=200,
                    stats=Stats("refill", "eventsourcing", 8),
                )
            )
    finally:
        proc.stop()
    return with_workers(results, workers)


# -- in-process ---------------------------------------------------------------------------------


def build_log(db: Path | str, events: int, *, batch: int = 500) -> dict[str, Any]:
    """Fill a log with about ``events`` events (tasks created, claimed and succeeded) through the
    real command handler, ``batch`` commands per transaction; returns the append rate."""
    from api.composition import Store
    from ledger.commands import ClaimTask, CompleteTask, CreateTask
    from ledger.events import blob_ref
    from ledger.handler import Request
    from ledger.log import Actor, Envelope

    store = Store(db)
    data = b"benchmark input " * 16
    output = json.dumps(OUTPUT).encode()
    ref, out_ref = blob_ref(data), blob_ref(output)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    env = Envelope(recorded_at=t0, actor=Actor(key_id="bench", role="system"))
    written = 0
    started = time.perf_counter()
    while written < events:
        ids = [str(uuid.uuid4()) for _ in range(min(batch // 3 + 1, (events - written) // 3 + 1))]
        at = t0 + timedelta(seconds=written)
        requests = [
            Request(
                command=CreateTask(
                    task_id=i,
                    at=at,
                    owner=f"owner{n % 50}",
                    configuration={"chunk_processing": {"target_length": 512}},
                    file=ref,
                    file_name="bench.txt",
                ),
                envelope=env,
                blobs=(data,),
            )
            for n, i in enumerate(ids)
        ]
        requests += [
            Request(
                command=ClaimTask(
                    task_id=i, at=at, worker_id="w", lease_until=at + timedelta(minutes=5)
                ),
                envelope=env,
            )
            for i in ids
        ]
        requests += [
            Request(
                command=CompleteTask(task_id=i, at=at, worker_id="w", output=out_ref),
                envelope=env,
                blobs=(output,),
            )
            for i in ids
        ]
        results = store.handler.execute_batch(requests)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise RuntimeError(f"build failed: {failures[0]!r}")
        written += len(requests)
    seconds = time.perf_counter() - started
    store.close()
    return {
        "events": written,
        "seconds": round(seconds, 2),
        "events_per_s": round(written / seconds),
    }


def append_unbatched(db: Path | str, count: int) -> dict[str, Any]:
    """One command per transaction (one fsync each): the cost group commit saves."""
    from api.composition import Store
    from ledger.commands import CreateTask
    from ledger.events import blob_ref
    from ledger.log import Envelope

    store = Store(db)
    data = b"x"
    env = Envelope(recorded_at=datetime.now(UTC))
    started = time.perf_counter()
    for _ in range(count):
        store.handler.execute(
            CreateTask(
                task_id=str(uuid.uuid4()),
                at=datetime.now(UTC),
                owner="o",
                configuration={},
                file=blob_ref(data),
            ),
            env,
            blobs=[data],
        )
    seconds = time.perf_counter() - started
    store.close()
    return {"events": count, "seconds": round(seconds, 2), "events_per_s": round(count / seconds)}


def replay_log(store: Any) -> dict[str, Any]:
    """Replay as a new projection would: the whole log in position order, each event decoded
    and folded into its task's state (all tasks' states held in memory)."""
    from ledger import codec
    from ledger.decider import evolve, initial_state
    from ledger.log import task_id_of
    from ledger.webhooks import WebhookEvent

    states: dict[str, Any] = {}
    for stream_id, data in store.log.iter_data():
        event = codec.decode_event(data)
        if isinstance(event, WebhookEvent):  # a subscription's stream, not a task's
            continue
        state = states.get(stream_id) or initial_state(task_id_of(stream_id))
        states[stream_id] = evolve(state, event)
    return states


def measure_log(db: Path | str) -> dict[str, Any]:
    from api.composition import Store
    from projections import audit

    store = Store(db)
    total = store.log.last_position()
    figures: dict[str, Any] = {"events": total}
    started = time.perf_counter()
    tasks = len(replay_log(store))
    seconds = time.perf_counter() - started
    figures["replay"] = {
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "events_per_s": round(total / seconds),
    }
    started = time.perf_counter()
    tasks = sum(1 for _ in audit.fold_streams(store.log))
    seconds = time.perf_counter() - started
    figures["replay_by_stream"] = {
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "events_per_s": round(total / seconds),
    }
    started = time.perf_counter()
    differences = audit.verify(store.log, store.views)
    seconds = time.perf_counter() - started
    figures["verify"] = {
        "seconds": round(seconds, 2),
        "events_per_s": round(total / seconds),
        "differences": len(differences),
    }
    started = time.perf_counter()
    audit.rebuild(store.log, store.views)
    seconds = time.perf_counter() - started
    figures["rebuild"] = {"seconds": round(seconds, 2), "events_per_s": round(total / seconds)}
    store.close()
    return figures


def peer_notification_read(db: Path | str, events: int) -> dict[str, Any]:
    """The eventsourcing library reading its own notification log, mapping each notification to a
    domain event (as a projection would)."""
    from scripts.bench_peer import Task, make_application

    app = make_application(str(db))
    made = 0
    while made < events:
        batch = []
        for _ in range(min(500, (events - made + 1) // 2)):
            task = Task("o", {"chunk_processing": {"target_length": 512}}, "YmVuY2htYXJr")
            task.claim("w")
            batch.append(task)
        app.save(*batch)
        made += 2 * len(batch)
    started = time.perf_counter()
    read = 0
    start = 1
    while True:
        notifications = app.recorder.select_notifications(start=start, limit=1000)
        if not notifications:
            break
        for notification in notifications:
            app.mapper.to_domain_event(notification)
        read += len(notifications)
        start = notifications[-1].id + 1
    seconds = time.perf_counter() - started
    return {"events": read, "seconds": round(seconds, 2), "events_per_s": round(read / seconds)}


def get_latency(
    small: Path | str, large: Path | str, requests: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """GET /task/{id} at concurrency 1 over random tasks, on a small and a large database at
    once: a server on each, requests alternating between them (which one goes first alternates
    too), so a burst of noise on this shared machine hits both sides alike."""
    servers = []
    try:
        for db in (small, large):
            from api.composition import Store
            from ledger.log import TaskQuery

            store = Store(db)
            listed = store.views.list_tasks(TaskQuery(at=datetime.now(UTC)))
            store.close()
            ids = [s.task_id for s in random.sample(listed, min(5000, len(listed)))]
            proc, _ = start_taskledger(db)
            servers.append((proc, ids, {"Authorization": make_key(db, "bench-admin", "admin")}))

        async def measure() -> list[Stats]:
            stats = [Stats("get", "taskledger", 1) for _ in servers]
            conns = [Connection("127.0.0.1", proc.port) for proc, _, _ in servers]
            try:
                for n in range(200 + requests):  # the first 200 of each warm up
                    for i in (0, 1) if n % 2 else (1, 0):
                        _, ids, headers = servers[i]
                        started = time.perf_counter()
                        status, _ = await conns[i].request(
                            "GET", f"/api/v1/task/{random.choice(ids)}", headers=headers
                        )
                        elapsed = time.perf_counter() - started
                        if status != 200:
                            stats[i].errors += 1
                        elif n >= 200:
                            stats[i].latencies.append(elapsed)
                            stats[i].seconds += elapsed
            finally:
                for conn in conns:
                    await conn.close()
            return stats

        small_stats, large_stats = run_async(measure())
        out = small_stats.summary(), large_stats.summary()
        out[0]["peak_rss_mb"] = servers[0][0].peak_rss_mb()
        out[1]["peak_rss_mb"] = servers[1][0].peak_rss_mb()
        return out
    finally:
        for proc, _, _ in servers:
            proc.stop()


# -- report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in ("litestar", "uvicorn", "msgspec", "eventsourcing", "taskledger"):
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "?"
    return found


def find(
    rows: list[dict], target: str, route: str, concurrency: int, processes: int = 1
) -> dict | None:
    for row in rows:
        if (row["target"], row["route"], row["concurrency"], row.get("processes", 1)) == (
            target,
            route,
            concurrency,
            processes,
        ):
            return row
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = report["http"]
    c = max(report["conditions"]["concurrency"])
    ip = report["in_process"]

    counts = sorted({row.get("processes", 1) for row in rows})

    def http_ratio(ours: tuple[str, str], theirs: tuple[str, str]) -> tuple[float | None, str]:
        """Ours against theirs with the same number of server processes (the same settings),
        for each number run; the value is the best of those, and the basis lists them all."""
        found = []
        for n in counts:
            a, b = find(rows, *ours, c, n), find(rows, *theirs, c, n)
            if a and b:
                found.append((ratio(a["rps"], b["rps"]), n, a["rps"], b["rps"]))
        if not found:
            return None, ""
        best = max(found, key=lambda item: item[0] or 0)[0]
        return best, "; ".join(
            f"{n} process{'es' if n > 1 else ''}: {a:,} vs {b:,} req/s = {r}"
            for r, n, a, b in found
        )

    def best_of(
        *found: tuple[float | None, str], labels: tuple[str, ...]
    ) -> tuple[float | None, str]:
        scored = [
            (value, f"{label}: {basis}")
            for (value, basis), label in zip(found, labels, strict=True)
            if value is not None
        ]
        if not scored:
            return None, ""
        return max(value for value, _ in scored), " / ".join(basis for _, basis in scored)

    checks = [
        (
            "create vs eventsourcing create",
            *http_ratio(("taskledger", "create"), ("eventsourcing", "create")),
            3.0,
            ">=",
        ),
        (
            "create (FULL) vs floor insert (NORMAL)",
            *http_ratio(("taskledger", "create"), ("floor", "insert (NORMAL)")),
            1.0,
            ">=",
        ),
        (
            "claim+complete vs eventsourcing claim",
            *best_of(
                http_ratio(("taskledger", "claim+complete"), ("eventsourcing", "claim")),
                http_ratio(
                    ("taskledger", "claim+complete (claim_next)"), ("eventsourcing", "claim")
                ),
                labels=("two requests", "complete with claim_next"),
            ),
            3.0,
            ">=",
        ),
        (
            "get vs floor read one row",
            *http_ratio(("taskledger", "get"), ("floor", "read one row")),
            0.9,
            ">=",
        ),
        (
            "get p99 at N events / p99 at 10k",
            ratio(ip["get_large"]["p99_ms"], ip["get_small"]["p99_ms"]),
            "",
            1.2,
            "<=",
        ),
        ("replay events/s", ip["log"]["replay"]["events_per_s"], "", 200_000, ">="),
        (
            "replay vs eventsourcing notification read",
            ratio(ip["log"]["replay"]["events_per_s"], ip["peer_read"]["events_per_s"]),
            "",
            2.0,
            ">=",
        ),
        ("verify seconds", ip["log"]["verify"]["seconds"], "", 15.0, "<="),
        ("server peak RSS MB with N events", ip["get_large"].get("peak_rss_mb"), "", 250.0, "<="),
    ]
    out = []
    for name, value, basis, goal, op in checks:
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        out.append(
            {"target": name, "value": value, "goal": f"{op} {goal}", "met": met, "basis": basis}
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    cond = report["conditions"]
    lines = [
        f"Run {cond['started_at']} on {cond['cpus']} CPUs ({cond['machine']}); "
        f"{cond['seconds_per_scenario']} s per HTTP scenario; log of {cond['events']:,} events.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in cond["versions"].items()),
        "",
        "taskledger: `synchronous=FULL`, group commit; floor: WAL `synchronous=NORMAL`, one insert per"
        " request; peer: eventsourcing with its SQLite defaults. All uvicorn (uvloop, httptools),"
        " log level warning, no access log (taskledger writes its own JSON request line); each"
        " server once as one process and once with 2 worker processes at the highest"
        " concurrency. The load generator runs on the same machine (about 0.2-0.4 of a core).",
        "",
        "| target | route | processes | clients | requests | errors | req/s | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["http"]:
        lines.append(
            f"| {row['target']} | {row['route']} | {row.get('processes', 1)} | "
            f"{row['concurrency']} | {row['requests']} | "
            f"{row['errors']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} |"
        )
    ip = report["in_process"]
    lines += [
        "",
        "| in-process | figure |",
        "| --- | --- |",
        f"| append, batched (group commit, FULL) | {ip['append_batched']['events_per_s']:,} events/s |",
        f"| append, one command per transaction (FULL) | {ip['append_unbatched']['events_per_s']:,} events/s |",
        f"| replay (position order, decode + fold into every task's state) | {ip['log']['replay']['events_per_s']:,} events/s |",
        f"| replay stream by stream (what verify and rebuild do; flat memory) | {ip['log']['replay_by_stream']['events_per_s']:,} events/s |",
        f"| eventsourcing reading its notification log | {ip['peer_read']['events_per_s']:,} events/s |",
        f"| verify ({ip['log']['events']:,} events) | {ip['log']['verify']['seconds']} s ({ip['log']['verify']['events_per_s']:,} events/s) |",
        f"| rebuild ({ip['log']['events']:,} events) | {ip['log']['rebuild']['seconds']} s ({ip['log']['rebuild']['events_per_s']:,} events/s) |",
        f"| GET p50 / p99 at {ip['small_events']:,} events | {ip['get_small']['p50_ms']} / {ip['get_small']['p99_ms']} ms |",
        f"| GET p50 / p99 at {ip['log']['events']:,} events | {ip['get_large']['p50_ms']} / {ip['get_large']['p99_ms']} ms |",
        f"| server peak RSS, HTTP load run | {report['server']['peak_rss_mb']} MB |",
        f"| server peak RSS, {ip['log']['events']:,} events | {ip['get_large'].get('peak_rss_mb')} MB |",
        "",
        "| target | value | goal | met | from |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} | "
            f"{t.get('basis', '')} |"
        )
    return "\n".join(lines) + "\n"


def run(
    *,
    events: int,
    seconds: float,
    concurrency: list[int],
    out: Path,
    small_events: int = 10_000,
    get_requests: int = 3000,
    keep: bool = False,
    echo: Callable[[str], None] = print,
    workers: list[int] = [1, 2],  # noqa: B006 - read only
    db: Path | str | None = None,
) -> dict[str, Any]:
    """The whole benchmark. ``db`` a ``postgresql://`` URL runs the PostgreSQL variant on that
    server (``scripts.bench_postgres``, ``workers`` then counting nodes); None or a file runs it
    on SQLite files of its own, made in a temporary directory (a file given is not used)."""
    from api.settings import is_database_url

    if is_database_url(db):
        assert isinstance(db, str)
        from scripts import bench_postgres

        return bench_postgres.run(
            db,
            events=events,
            seconds=seconds,
            concurrency=concurrency,
            out=out,
            small_events=small_events,
            get_requests=get_requests,
            echo=echo,
            nodes=workers,
        )
    work = Path(tempfile.mkdtemp(prefix="taskledger-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "conditions": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}",
            "versions": versions(),
            "concurrency": concurrency,
            "server_processes": workers,
            "seconds_per_scenario": seconds,
            "events": events,
            "pragmas": {
                "taskledger": "journal_mode=WAL, synchronous=FULL",
                "floor": "journal_mode=WAL, synchronous=NORMAL",
                "eventsourcing": "library defaults",
            },
        }
    }
    try:
        http: list[dict] = []
        server: dict[str, Any] = {}
        for n in workers:
            # One process: every concurrency. More: only the highest (one client can't use them).
            levels = concurrency if n == 1 else [max(concurrency)]
            echo(f"HTTP: taskledger, {n} process(es) ...")
            rows, info = http_taskledger(seconds, levels, work, n)
            http += rows
            server[f"peak_rss_mb_{n}"] = info["peak_rss_mb"]
            echo(f"HTTP: floor, {n} process(es) ...")
            http += http_floor(seconds, levels, work, n)
            echo(f"HTTP: eventsourcing peer, {n} process(es) ...")
            http += http_peer(seconds, levels, work, n)
        server["peak_rss_mb"] = server.get("peak_rss_mb_1")
        report["http"], report["server"] = http, server
        ip: dict[str, Any] = {"small_events": small_events}
        echo(f"in-process: building a log of {events:,} events ...")
        ip["append_batched"] = build_log(work / "large.db", events)
        ip["append_unbatched"] = append_unbatched(work / "unbatched.db", 300)
        build_log(work / "small.db", small_events)
        echo("in-process: replay, verify, rebuild ...")
        ip["log"] = measure_log(work / "large.db")
        echo("in-process: eventsourcing notification log ...")
        ip["peer_read"] = peer_notification_read(work / "peer-log.db", min(events, 200_000))
        echo("GET latency at small and large logs ...")
        ip["get_small"], ip["get_large"] = get_latency(
            work / "small.db", work / "large.db", get_requests
        )
        report["in_process"] = ip
        report["targets"] = targets(report)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    return report


# -- the command line: `taskledger bench` (registered in scripts/cli.py) -------------------------


@click.command("bench")
@click.option(
    "--events",
    default=1_000_000,
    show_default=True,
    type=int,
    help="Size of the log for the in-process figures.",
)
@click.option(
    "--seconds", default=5.0, show_default=True, type=float, help="Length of each HTTP scenario."
)
@click.option(
    "--concurrency",
    multiple=True,
    type=int,
    default=(1, 32),
    show_default=True,
    help="Concurrent clients (repeat the option for several).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Where bench.json and bench.md go.",
)
@click.option(
    "--workers",
    multiple=True,
    type=int,
    default=(1, 2),
    show_default=True,
    help="Server processes to run each server with (repeat the option for several; counts"
    " above 1 run at the highest concurrency only).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Small sizes and short scenarios: a smoke test, not a measurement.",
)
@click.option(
    "--db",
    "db",
    type=DatabaseParam(),
    default=None,
    help="A postgresql://user@host:port/database URL runs the benchmark on that PostgreSQL server"
    " (each app on a database it creates and drops; --workers then counts taskledger nodes on"
    " one database). Without it, or with a file, everything runs on SQLite files of its own in a"
    " temporary directory, as always.",
)
@click.option(
    "--webhooks",
    is_flag=True,
    help="Measure webhooks instead (scripts/bench_webhooks.py): 1,000 tasks' deliveries to a"
    " local receiver, and the create rate with a subscription that hears every event against"
    " the rate without one, alternating for 3 rounds of --seconds.",
)
def bench_command(
    events: int,
    seconds: float,
    concurrency: tuple[int, ...],
    workers: tuple[int, ...],
    out: Path,
    quick: bool,
    db: Path | str | None,
    webhooks: bool,
) -> None:
    """Measure taskledger side by side with a floor app and the eventsourcing library.

    Needs the bench extra (pip install -e '.[bench]'). Everything runs on 127.0.0.1 and stops by
    itself; the full run takes several minutes. See BENCHMARKS.md.

    Example:

        taskledger bench --events 1000000 --seconds 5 --out bench-results

        taskledger bench --db postgresql://postgres@127.0.0.1:5432/postgres

        taskledger bench --webhooks --seconds 5
    """
    if webhooks:
        from scripts import bench_webhooks

        found = bench_webhooks.measure(100 if quick else 1000, 0.5 if quick else seconds, 3)
        out.mkdir(parents=True, exist_ok=True)
        (out / "webhooks.json").write_text(json.dumps(found, indent=2))
        bench_webhooks.summarise(found, lambda line: click.echo(line, err=True))
        click.echo(f"Wrote {out / 'webhooks.json'}", err=True)
        return
    if quick:
        events, seconds = 3000, 0.5
    report = run(
        events=events,
        seconds=seconds,
        concurrency=list(concurrency),
        out=out,
        small_events=min(10_000, events),
        get_requests=300 if quick else 3000,
        echo=lambda line: click.echo(line, err=True),
        workers=list(workers),
        db=db,
    )
    if report["conditions"].get("backend") == "postgresql":
        from scripts import bench_postgres

        click.echo(bench_postgres.markdown(report))
    else:
        click.echo(markdown(report))
