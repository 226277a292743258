"""Where a create's CPU goes: the figures behind "What limits each figure" in BENCHMARKS.md.

``python -m scripts.bench_profile threads [--seconds 5]``
    Starts ``taskledger serve`` (one process) and the floor app on fresh databases, drives each
    with 32 keep-alive create clients, and prints requests/s and CPU per request: for taskledger
    per thread (from ``/proc/<pid>/task/*/stat``: the main thread runs the event loop; under
    creates the busiest other thread is the group-commit writer), for the floor its whole
    process. Linux only.

``python -m scripts.bench_profile writer [--batches 200]``
    The command handler alone, no HTTP: creates 32 to a transaction through
    ``CommandHandler.execute_batch``, CPU per create, the time each SQL statement takes per
    create, and the WAL pages one commit writes.

``python -m scripts.bench_profile postgres --db postgresql://... [--seconds 5] [--batches 100]``
    The same questions on PostgreSQL, on databases it makes and drops on that server:
    ``taskledger serve --db <url>`` and the eventsourcing peer under 32 create clients, with the
    CPU per create of each server thread, of the PostgreSQL backends serving the app's
    database, and of the load generator, and the write transactions (group-commit batches) the
    creates took; then the command handler alone (batches of 32 creates): wall time and CPU per
    create under the write lock, statements sent and answers waited for per create.

All print measurements of this machine at this moment; compare figures from one run only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts import bench

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id and name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def drive_creates(port: int, path: str, headers: dict[str, str], seconds: float) -> int:
    body = json.dumps({"file": bench.FILE_B64, "file_name": "bench.txt"}).encode()

    async def create(conn: bench.Connection) -> bool:
        status, _ = await conn.request("POST", path, body, headers)
        return status == 200

    stats = bench.Stats("create", "profile", 32)
    bench.run_async(
        bench.drive(
            "127.0.0.1", port, create, concurrency=32, seconds=seconds, max_ops=None, stats=stats
        )
    )
    if stats.errors:
        raise RuntimeError(f"{stats.errors} creates failed")
    return len(stats.latencies)


def threads(seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="taskledger-profile-"))
    proc, key = bench.start_taskledger(work / "taskledger.db")
    try:
        drive_creates(proc.port, "/api/v1/task/parse", {"Authorization": key}, 1.0)  # warm up
        before, started = thread_cpu(proc.proc.pid), time.perf_counter()
        done = drive_creates(proc.port, "/api/v1/task/parse", {"Authorization": key}, seconds)
        after, elapsed = thread_cpu(proc.proc.pid), time.perf_counter() - started
    finally:
        proc.stop()
    print(f"taskledger create, 1 process, 32 clients: {done / elapsed:,.0f} req/s")
    for name, cpu in after.items():
        used = cpu - before.get(name, 0.0)
        if used > 0:
            tid = int(name.split()[0])
            role = "main thread: the event loop" if tid == proc.proc.pid else "a worker thread"
            print(
                f"  thread {tid} ({role}): {used / elapsed:4.2f} cores, "
                f"{used / done * 1e6:.0f} us/request"
            )
    floor = bench.start_uvicorn("scripts.bench_floor:create_app", work / "floor.db")
    try:
        drive_creates(floor.port, "/rows", {}, 1.0)
        before_cpu, started = sum(thread_cpu(floor.proc.pid).values()), time.perf_counter()
        done = drive_creates(floor.port, "/rows", {}, seconds)
        used, elapsed = (
            sum(thread_cpu(floor.proc.pid).values()) - before_cpu,
            time.perf_counter() - started,
        )
    finally:
        floor.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"floor insert (NORMAL), 1 process, 32 clients: {done / elapsed:,.0f} req/s, "
        f"{used / done * 1e6:.0f} us/request of CPU"
    )


def writer(batches: int) -> None:
    from api.composition import Store
    from api.ids import new_task_id
    from ledger.commands import CreateTask
    from ledger.events import blob_ref
    from ledger.handler import Request
    from ledger.log import Actor, Envelope
    from ledger.sqlite import SqliteBackend

    work = Path(tempfile.mkdtemp(prefix="taskledger-profile-"))
    backend = SqliteBackend(work / "writer.db")  # its write connection is timed below
    store = Store(backend.path, backend=backend)
    data = b"benchmark input " * 16
    ref = blob_ref(data)

    def batch(n: int = 32) -> list[Request]:
        at = datetime.now(UTC)
        envelope = Envelope(
            recorded_at=at, actor=Actor(key_id="k", role="user"), request_id="r" * 32
        )
        return [
            Request(
                command=CreateTask(
                    task_id=new_task_id(),
                    at=at,
                    owner="o",
                    configuration={"chunk_processing": {"target_length": 512}},
                    file=ref,
                    file_name="bench.txt",
                ),
                envelope=envelope,
                blobs=(data,),
            )
            for _ in range(n)
        ]

    for _ in range(50):  # warm up, and a table that is not empty
        store.handler.execute_batch(batch())
    batches_made = [batch() for _ in range(batches)]
    started = time.thread_time()
    for requests in batches_made:
        store.handler.execute_batch(requests)
    cpu = (time.thread_time() - started) / (batches * 32)
    print(f"handler alone: {cpu * 1e6:.0f} us of CPU per create (32 creates a transaction, FULL)")

    real = backend.log._writer
    spent: dict[str, float] = collections.defaultdict(float)

    class Timed:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            t = time.perf_counter()
            try:
                return real.execute(sql, *args)
            finally:
                spent[sql.split("(")[0][:48]] += time.perf_counter() - t

    backend.log._writer = Timed()  # type: ignore[assignment]
    for requests in [batch() for _ in range(batches)]:
        store.handler.execute_batch(requests)
    backend.log._writer = real
    print("time per create in each statement:")
    for sql, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {seconds / (batches * 32) * 1e6:6.1f} us  {sql}")

    real.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    real.execute("PRAGMA wal_autocheckpoint = 0")
    wal = Path(f"{backend.path}-wal")
    size = wal.stat().st_size if wal.exists() else 0
    for requests in [batch() for _ in range(50)]:
        store.handler.execute_batch(requests)
    page = real.execute("PRAGMA page_size").fetchone()[0]
    pages = (wal.stat().st_size - size) / (page + 24) / 50
    print(f"WAL pages written per commit of 32 creates: {pages:.0f} ({page} bytes each)")
    store.close()
    shutil.rmtree(work, ignore_errors=True)


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes, summed (those gone count 0)."""
    total = 0.0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def backend_pids(server_url: str, database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` (on this machine)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def postgres(url: str, seconds: float, batches: int) -> None:
    from scripts.bench_postgres import Databases

    dbs = Databases(url)
    try:
        db = dbs.new("profile_taskledger")
        proc, key = bench.start_taskledger(db)
        name = db.rsplit("/", 1)[1]
        try:
            drive_creates(proc.port, "/api/v1/task/parse", {"Authorization": key}, 1.0)
            pids = backend_pids(url, name)
            before, pg_before = thread_cpu(proc.proc.pid), process_cpu(pids)
            mine, started = time.process_time(), time.perf_counter()
            with bench.write_transactions(db) as counted:
                done = drive_creates(
                    proc.port, "/api/v1/task/parse", {"Authorization": key}, seconds
                )
            elapsed = time.perf_counter() - started
            mine = time.process_time() - mine
            after, pg_used = thread_cpu(proc.proc.pid), process_cpu(pids) - pg_before
        finally:
            proc.stop()
        print(
            f"taskledger create on PostgreSQL, 1 node, 32 clients: {done / elapsed:,.0f} req/s,"
            f" {counted['batches']} write transactions of {done / max(1, counted['batches']):.1f}"
            " creates on average"
        )
        for thread, cpu in after.items():
            used = cpu - before.get(thread, 0.0)
            if used / done * 1e6 >= 5:
                tid = int(thread.split()[0])
                role = "main thread: the event loop" if tid == proc.proc.pid else "another thread"
                print(
                    f"  thread {tid} ({role}): {used / elapsed:4.2f} cores, "
                    f"{used / done * 1e6:.0f} us/request"
                )
        print(
            f"  PostgreSQL backends of its database: {pg_used / elapsed:4.2f} cores, "
            f"{pg_used / done * 1e6:.0f} us/request"
        )
        print(
            f"  load generator (this process): {mine / elapsed:4.2f} cores, "
            f"{mine / done * 1e6:.0f} us/request"
        )

        db = dbs.new("profile_peer")
        peer = bench.start_uvicorn("scripts.bench_peer:create_app", db)
        try:
            drive_creates(peer.port, "/tasks", {}, 1.0)
            pids = backend_pids(url, db.rsplit("/", 1)[1])
            cpu_before, pg_before = sum(thread_cpu(peer.proc.pid).values()), process_cpu(pids)
            started = time.perf_counter()
            done = drive_creates(peer.port, "/tasks", {}, seconds)
            elapsed = time.perf_counter() - started
            used = sum(thread_cpu(peer.proc.pid).values()) - cpu_before
            pg_used = process_cpu(pids) - pg_before
        finally:
            peer.stop()
        print(
            f"eventsourcing create on PostgreSQL, 1 process, 32 clients: {done / elapsed:,.0f}"
            f" req/s; its process {used / elapsed:4.2f} cores, {used / done * 1e6:.0f} us/request;"
            f" its PostgreSQL backends {pg_used / elapsed:4.2f} cores,"
            f" {pg_used / done * 1e6:.0f} us/request"
        )
        postgres_writer(dbs.new("profile_writer"), batches)
    finally:
        dbs.drop_all()


def postgres_writer(db: str, batches: int, size: int = 32) -> None:
    """The command handler alone on PostgreSQL: batches of ``size`` creates, each in the write
    turn and one transaction, as a node's writer runs them."""
    import psycopg

    from api.composition import Store
    from api.ids import new_task_id
    from ledger.commands import CreateTask
    from ledger.events import blob_ref
    from ledger.handler import Request
    from ledger.log import Actor, Envelope

    store = Store(db)
    data = b"benchmark input " * 16
    ref = blob_ref(data)

    def batch() -> list[Request]:
        at = datetime.now(UTC)
        envelope = Envelope(
            recorded_at=at, actor=Actor(key_id="k", role="user"), request_id="r" * 32
        )
        return [
            Request(
                command=CreateTask(
                    task_id=new_task_id(),
                    at=at,
                    owner="o",
                    configuration={"chunk_processing": {"target_length": 512}},
                    file=ref,
                    file_name="bench.txt",
                ),
                envelope=envelope,
                blobs=(data,),
            )
            for _ in range(size)
        ]

    def run(count: int) -> tuple[float, float]:
        made = [batch() for _ in range(count)]
        wall, cpu = time.perf_counter(), time.thread_time()
        for requests in made:
            with store.log.write_turn():
                store.handler.execute_batch(requests)
        return time.perf_counter() - wall, time.thread_time() - cpu

    run(20)  # warm up: prepared statements, a table that is not empty
    wall, cpu = run(batches)
    creates = batches * size
    print(
        f"handler alone on PostgreSQL ({size} creates a transaction, the write turn held):"
        f" {wall / creates * 1e6:.0f} us per create, {cpu / creates * 1e6:.0f} us of it CPU"
    )
    # Count what the writer sends and what it waits for: each answer read (a fetch, or the
    # pipeline's sync at COMMIT) is a round trip the writer waits through.
    counts: collections.Counter[str] = collections.Counter()
    patched = {
        (psycopg.Connection, "execute"): "statements",
        (psycopg.Cursor, "executemany"): "statements",
        (psycopg.Cursor, "fetchone"): "answers waited for",
        (psycopg.Cursor, "fetchall"): "answers waited for",
        (psycopg.Pipeline, "sync"): "answers waited for",
    }
    originals = {key: getattr(*key) for key in patched}

    def counting(original: Any, what: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[what] += 1
            return original(*args, **kwargs)

        return call

    for (cls, attr), what in patched.items():
        setattr(cls, attr, counting(originals[(cls, attr)], what))
    try:
        run(10)
    finally:
        for (cls, attr), original in originals.items():
            setattr(cls, attr, original)
    for what, count in counts.items():
        print(f"  {what}: {count / (10 * size):.2f} per create")
    store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("threads").add_argument("--seconds", type=float, default=5.0)
    sub.add_parser("writer").add_argument("--batches", type=int, default=200)
    pg = sub.add_parser("postgres")
    pg.add_argument("--db", required=True, help="a postgresql:// URL of a server")
    pg.add_argument("--seconds", type=float, default=5.0)
    pg.add_argument("--batches", type=int, default=100)
    args = parser.parse_args(argv)
    if args.what == "threads":
        threads(args.seconds)
    elif args.what == "postgres":
        postgres(args.db, args.seconds, args.batches)
    else:
        writer(args.batches)


if __name__ == "__main__":
    main()
