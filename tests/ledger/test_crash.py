"""Kill -9 in the middle of appending: whatever a writer was told is committed survives, and the
file reopens with the log and its projections in agreement."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from stories import check_consistent

from api.composition import Store
from ledger.events import TaskCreated
from ledger.log import stream_id_for

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys, uuid, hashlib
from datetime import UTC, datetime, timedelta
from ledger.commands import ClaimTask, CompleteTask, CreateTask, CancelTask
from ledger.events import BlobRef
from ledger.handler import Request
from ledger.log import Actor, Envelope
from api.composition import Store

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
round_ = int(sys.argv[2])
at = lambda n: T0 + timedelta(seconds=round_ * 1_000_000 + n)
ref = lambda data: BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
store = Store(sys.argv[1])
env = lambda n: Envelope(recorded_at=at(n), actor=Actor(key_id="k", role="user"))

def create(task_id, n):
    data = b"input of " + task_id.encode()
    return CreateTask(task_id=task_id, at=at(n), owner="alice", configuration={"n": n},
                      file=ref(data), expires_in=60), [data]

print("ready", flush=True)
n = 0
while True:
    n += 1
    if n % 7 == 0:
        # Group commit: five creates in one transaction, reported once the batch returns.
        ids = [str(uuid.uuid4()) for _ in range(5)]
        requests = []
        for task_id in ids:
            command, blobs = create(task_id, n)
            requests.append(Request(command=command, envelope=env(n), blobs=tuple(blobs)))
        results = store.handler.execute_batch(requests)
        assert not any(isinstance(r, BaseException) for r in results), results
        for task_id in ids:
            print(task_id, flush=True)
        continue
    task_id = str(uuid.uuid4())
    command, blobs = create(task_id, n)
    store.handler.execute(command, env(n), blobs=blobs)
    print(task_id, flush=True)
    if n % 2 == 0:  # a worker takes the oldest queued task and finishes it
        source = store.claim_source(lambda t: ClaimTask(task_id=t, at=at(n), worker_id="w",
                                                         lease_until=at(n + 30)))
        claimed = store.handler.execute(source, env(n)).after.task_id
        output = b"output of " + claimed.encode()
        store.handler.execute(CompleteTask(task_id=claimed, at=at(n), worker_id="w",
                                           output=ref(output)), env(n), blobs=[output])
    if n % 3 == 0:
        store.handler.execute(CancelTask(task_id=task_id, at=at(n)), env(n))
"""


def kill_a_writer(path: Path, script: Path, round_: int) -> list[str]:
    """Start the writer, let it run about a second, SIGKILL it; the ids it reported."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(round_)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read()
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read()  # still writing when it is killed
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Only whole lines count: a line cut short was never reported as done.
    return [line.decode() for line in out.splitlines(keepends=True) if line.endswith(b"\n")]


def test_every_reported_task_survives_sigkill_and_the_file_stays_consistent(tmp_path):
    path = tmp_path / "ledger.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    reported: list[str] = []
    last_position = 0
    for round_ in range(3):  # crash the same file repeatedly, reopening it each time
        ids = [line.strip() for line in kill_a_writer(path, script, round_)]
        assert len(ids) >= 20, "the writer barely ran; the test proves nothing"
        reported += ids

        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = Store(path)
        try:
            streams = check_consistent(store)  # projection == fold, versions, positions, queue
            for task_id in reported:
                stream = streams.get(stream_id_for(task_id))
                assert stream, f"task {task_id} was reported created but is not in the log"
                assert isinstance(stream[0].event, TaskCreated)
                state = store.state(task_id)
                assert state is not None and state.status in (
                    "Starting",
                    "Processing",
                    "Succeeded",
                    "Cancelled",
                )
                assert store.log.get_blob(stream[0].event.file) is not None
            # Reported ids were created in the order they were reported.
            positions = [streams[stream_id_for(t)][0].position for t in ids]
            assert positions == sorted(positions)
            # Positions keep growing across crashes: nothing from an earlier round was reused.
            assert min(positions) > last_position
            last_position = store.log.last_position()
            # Every Succeeded task has its output blob: the blob and the event committed together.
            for recorded in streams.values():
                state = store.state(recorded[0].event.task_id)
                if state.status == "Succeeded":
                    assert store.log.get_blob(state.output) is not None
        finally:
            store.close()
