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

Both print measurements of this machine at this moment; compare figures from one run only.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("threads").add_argument("--seconds", type=float, default=5.0)
    sub.add_parser("writer").add_argument("--batches", type=int, default=200)
    args = parser.parse_args(argv)
    if args.what == "threads":
        threads(args.seconds)
    else:
        writer(args.batches)


if __name__ == "__main__":
    main()
