"""Idle event streams against a big log: what they cost the server, and whether they hold up the
sweepers.

    python -m scripts.bench_streams [--events 200000] [--streams 30] [--window 10]

It builds a log of ``--events`` events (tasks of another owner, each created and cancelled,
appended through the store's command handler 500 commands a transaction: no HTTP), starts a real
``taskledger serve`` on it, and measures, side by side in one run:

1. the server process's CPU over ``--window`` seconds with no stream open, then with
   ``--streams`` idle ``GET /api/v1/events/stream`` connections of a user who has no task (spread
   over as many keys of that user as ``--max-streams-per-key`` needs). The CPU is read from
   ``/proc/<pid>/stat`` (utime + stime, every thread of the process) before and after the window;
2. with the streams still open, how long after its expiry a claim's 1 s lease is re-queued: a
   task is created and claimed with ``lease_seconds: 1``, and once it is Starting again the
   ``lease_expired`` event's ``recorded_at`` is compared with the claim's ``lease_until`` (both
   read from the log, so the figure does not depend on how often this script looks).

``--source DIR`` runs the server from another checkout (the database is built by this one), to
compare with an earlier version. Targets: the streams cost under 5% of a core in all, and the
lease is re-queued within 2 s of its expiry.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from api.composition import Store
from api.ids import new_task_id
from api.keys import create_key
from ledger import codec
from ledger.commands import CancelTask, CreateTask
from ledger.events import blob_ref
from ledger.handler import Request
from ledger.log import Actor, Envelope
from scripts.bench import free_port

ROOT = Path(__file__).resolve().parent.parent
CAP = 8  # serve --max-streams-per-key's default
BATCH = 500


def build_log(db: Path, events: int, owner: str = "someone-else") -> float:
    """Append ``events`` events (half created, half cancelled tasks of ``owner``) through the
    command handler, ``BATCH`` commands a transaction; returns the seconds it took."""
    started = time.perf_counter()
    store = Store(db, synchronous="OFF")
    data = b"bulk\n"
    ref = blob_ref(data)
    envelope = Envelope(recorded_at=datetime.now(UTC), actor=Actor(key_id="bulk", role="user"))
    made = 0
    try:
        while made < events:
            ids = [new_task_id() for _ in range(min(BATCH, events - made) // 2 or 1)]
            at = datetime.now(UTC)
            requests = [
                Request(
                    command=CreateTask(
                        task_id=task_id,
                        at=at,
                        owner=owner,
                        configuration={},
                        file=ref,
                        file_name="bulk.txt",
                    ),
                    envelope=envelope,
                    blobs=(data,),
                )
                for task_id in ids
            ]
            requests += [
                Request(command=CancelTask(task_id=task_id, at=at), envelope=envelope)
                for task_id in ids
            ]
            for result in store.handler.execute_batch(requests):
                if isinstance(result, BaseException):
                    raise result
            made += len(requests)
    finally:
        store.close()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, window: float) -> float:
    """The process's CPU over ``window`` seconds, as a share of one core."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


class Stream(threading.Thread):
    """One idle SSE connection, read until ``stop`` is set."""

    def __init__(self, url: str, key: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.stop = url, key, stop
        self.status: int | None = None
        self.lines = 0

    def run(self) -> None:
        timeout = httpx.Timeout(10, read=None)
        headers = {"Authorization": self.key}
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=timeout) as response:
                self.status = response.status_code
                for _ in response.iter_lines():
                    self.lines += 1
                    if self.stop.is_set():
                        return
        except httpx.HTTPError:
            return


def requeue_delay(api: str, db: Path, user: str, worker: str) -> float:
    """Seconds between a 1 s lease's end and its ``lease_expired`` event, both from the log."""
    with httpx.Client(base_url=api, timeout=30) as client:
        created = client.post(
            "/task/parse",
            json={"file": "aGVsbG8=", "file_name": "lease.txt"},
            headers={"Authorization": user},
        )
        created.raise_for_status()
        task_id = created.json()["task_id"]
        claimed = client.post(
            "/worker/claim",
            json={"worker_id": "bench", "lease_seconds": 1},
            headers={"Authorization": worker},
        )
        claimed.raise_for_status()
        assert claimed.json()["task_id"] == task_id, "the bench's task is the only one queued"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = client.get(f"/task/{task_id}", headers={"Authorization": worker})
            if got.json()["status"] == "Starting":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the lease was not re-queued within 120 s")
        # Cancelled, so that a later run on the same database finds the queue empty again.
        client.get(f"/task/{task_id}/cancel", headers={"Authorization": user})
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = dict(
            conn.execute(
                "SELECT type, data FROM events WHERE stream_id = ?", (f"task-{task_id}",)
            ).fetchall()
        )
        (expired_at,) = conn.execute(
            "SELECT recorded_at FROM events WHERE stream_id = ? AND type = 'lease_expired'",
            (f"task-{task_id}",),
        ).fetchone()
    finally:
        conn.close()
    lease_until = codec.decode_event(rows["claimed"]).lease_until  # type: ignore[union-attr]
    return (codec.parse_timestamp(expired_at) - lease_until).total_seconds()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--streams", type=int, default=30)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of each CPU window")
    parser.add_argument("--db", type=Path, default=None, help="reuse (or build) the log here")
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout that serves")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    db = args.db or directory / "ledger.db"
    if not db.exists():
        seconds = build_log(db, args.events)
        print(f"built a log of {args.events:,} events in {seconds:.1f} s")
    store = Store(db)
    try:
        total = store.log.last_position()
        keys = [
            create_key(store.records, "idle", "user")[1]
            for _ in range(math.ceil(args.streams / CAP))
        ]
        user = create_key(store.records, "leaser", "user")[1]
        worker = create_key(store.records, "pool", "worker")[1]
        create_key(store.records, "admin", "admin")  # so serve prints no key of its own
    finally:
        store.close()

    port = free_port()
    log = open(directory / "serve.log", "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "serve", "--db", str(db), "--port", str(port)],
        cwd=args.source,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    stop = threading.Event()
    streams: list[Stream] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"taskledger serve did not start; see {directory / 'serve.log'}")
            time.sleep(0.1)
        time.sleep(2)  # past start-up
        idle = cpu_share(server.pid, args.window)
        for n in range(args.streams):
            stream = Stream(f"{api}/events/stream", keys[n // CAP], stop)
            stream.start()
            streams.append(stream)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(s.status is None for s in streams):
            time.sleep(0.1)
        time.sleep(1)
        opened = sum(1 for s in streams if s.status == 200)
        with_streams = cpu_share(server.pid, args.window)
        delay = requeue_delay(api, db, user, worker)
        print(f"log: {total:,} events; server pid {server.pid}; window {args.window:g} s")
        print(f"server CPU, no stream open:          {idle:6.1%} of a core")
        print(f"server CPU, {opened:>3} idle streams open:  {with_streams:6.1%} of a core")
        print(f"the streams' share:                   {with_streams - idle:6.1%} of a core")
        print(f"1 s lease re-queued {delay:.2f} s after its expiry, with the streams open")
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    main()
