"""Racing conflicting commands on one task: exactly one wins, the other gets a clean refusal,
never a silent overwrite. Threads with their own connections, threads sharing one Store, and
separate processes, all on one SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stories import FILE, FILE_BYTES, at, check_consistent, created, envelope, new_id

from api.composition import Store
from ledger.commands import CancelTask, ClaimTask, CreateTask
from ledger.errors import ConcurrencyConflict, LedgerError
from ledger.events import Cancelled, Claimed, TaskCreated
from ledger.handler import Request
from ledger.log import stream_id_for
from ledger.sqlite.log import SqliteLog

ROOT = Path(__file__).resolve().parents[2]
CANCEL_LOST = "Task cannot be cancelled: status is Processing"
CLAIM_LOST = "Task cannot be claimed: status is Cancelled"


def cancel(task_id):
    return CancelTask(task_id=task_id, at=at(10), owner="alice", reason="race")


def claim(task_id):
    return ClaimTask(task_id=task_id, at=at(10), worker_id="w1", lease_until=at(40))


def create_tasks(store, n):
    ids = [new_id() for _ in range(n)]
    requests = [
        Request(
            command=CreateTask(task_id=t, at=at(0), owner="alice", configuration={}, file=FILE),
            envelope=envelope(at(0)),
            blobs=(FILE_BYTES,),
        )
        for t in ids
    ]
    results = store.handler.execute_batch(requests)
    assert all(not isinstance(r, BaseException) for r in results)
    return ids


def outcome_of(store, command):
    try:
        store.handler.execute(command, envelope(at(10)))
    except LedgerError as exc:
        return (type(exc).__name__, exc.message)
    return "won"


def race_in_threads(store_a, store_b, ids):
    """Thread A cancels, thread B claims, both released at once for every task."""
    barrier = threading.Barrier(2, timeout=30)
    results: dict[str, dict] = {"cancel": {}, "claim": {}}
    errors: list[BaseException] = []

    def worker(store, name, make):
        try:
            for task_id in ids:
                barrier.wait()
                results[name][task_id] = outcome_of(store, make(task_id))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=worker, args=(store_a, "cancel", cancel)),
        threading.Thread(target=worker, args=(store_b, "claim", claim)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def assert_one_winner_per_task(store, ids, results) -> dict[str, int]:
    wins = {"cancel": 0, "claim": 0}
    for task_id in ids:
        cancelled, claimed = results["cancel"][task_id], results["claim"][task_id]
        stream = [r.event for r in store.log.read_stream(stream_id_for(task_id))]
        assert len(stream) == 2 and isinstance(stream[0], TaskCreated), stream
        if cancelled == "won":
            wins["cancel"] += 1
            assert claimed == ("InvalidTransition", CLAIM_LOST)
            assert stream[1] == Cancelled(task_id=task_id, at=at(10), reason="race")
            assert store.state(task_id).status == "Cancelled"
        else:
            wins["claim"] += 1
            assert cancelled == ("InvalidTransition", CANCEL_LOST)
            assert claimed == "won"
            assert stream[1] == Claimed(
                task_id=task_id, at=at(10), worker_id="w1", lease_until=at(40), attempt=1
            )
            assert store.state(task_id).status == "Processing"
    check_consistent(store)  # projection == fold for every stream, queue now empty
    assert store.views.queue_entries() == []
    return wins


def test_cancel_and_claim_race_from_two_connections(tmp_path):
    path = tmp_path / "ledger.db"
    store_a, store_b = Store(path), Store(path)
    try:
        ids = create_tasks(store_a, 150)
        results = race_in_threads(store_a, store_b, ids)
        wins = assert_one_winner_per_task(store_a, ids, results)
        assert wins["cancel"] + wins["claim"] == len(ids)
        # The other connection sees the very same rows.
        for task_id in ids:
            assert store_b.state(task_id) == store_a.state(task_id)
    finally:
        store_a.close()
        store_b.close()


def test_cancel_and_claim_race_through_one_shared_store(store):
    ids = create_tasks(store, 150)
    results = race_in_threads(store, store, ids)
    wins = assert_one_winner_per_task(store, ids, results)
    assert wins["cancel"] + wins["claim"] == len(ids)


def test_many_threads_claiming_the_head_of_the_queue_each_get_a_different_task(store):
    """Eight workers draining a queue through one Store: no task is claimed twice, none lost."""
    ids = create_tasks(store, 120)
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(worker_id):
        source = store.claim_source(
            lambda task_id: ClaimTask(
                task_id=task_id, at=at(10), worker_id=worker_id, lease_until=at(40)
            )
        )
        while True:
            try:
                outcome = store.handler.execute(source, envelope(at(10), role="worker"))
            except LedgerError:
                return
            with lock:
                claimed.append(outcome.after.task_id)

    threads = [threading.Thread(target=drain, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(ids)
    check_consistent(store)


# -- processes ---------------------------------------------------------------------------------

RACER = """
import json, sys, time
from datetime import UTC, datetime, timedelta
from ledger.commands import CancelTask, ClaimTask
from ledger.errors import LedgerError
from ledger.log import Actor, Envelope
from api.composition import Store

path, role, ids_file = sys.argv[1:]
ids = json.loads(open(ids_file).read())
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
at = lambda s: T0 + timedelta(seconds=s)
store = Store(path)
env = Envelope(recorded_at=at(10), actor=Actor(key_id="k", role="worker"))
print("ready", flush=True)
start = float(sys.stdin.readline())
for n, task_id in enumerate(ids):
    # Both racers fire at the same wall-clock moment for each task, so they really collide.
    delay = start + n * 0.004 - time.time()
    if delay > 0:
        time.sleep(delay)
    if role == "cancel":
        command = CancelTask(task_id=task_id, at=at(10), owner="alice", reason="race")
    else:
        command = ClaimTask(task_id=task_id, at=at(10), worker_id="w1", lease_until=at(40))
    try:
        store.handler.execute(command, env)
        result = "won"
    except LedgerError as exc:
        result = [type(exc).__name__, exc.message]
    print(json.dumps([task_id, result]), flush=True)
store.close()
"""


def test_cancel_and_claim_race_from_two_processes(tmp_path):
    path = tmp_path / "ledger.db"
    store = Store(path)  # the schema exists before the racers open the file
    try:
        ids = create_tasks(store, 200)
        ids_file = tmp_path / "ids.json"
        ids_file.write_text(json.dumps(ids))
        script = tmp_path / "racer.py"
        script.write_text(RACER)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        racers = {
            role: subprocess.Popen(
                [sys.executable, str(script), str(path), role, str(ids_file)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for role in ("cancel", "claim")
        }
        for proc in racers.values():
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        start = time.time() + 0.2  # the moment both racers begin
        for proc in racers.values():
            proc.stdin.write(f"{start}\n")
            proc.stdin.flush()
        results = {}
        for role, proc in racers.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results[role] = {
                task_id: result if result == "won" else tuple(result)
                for task_id, result in map(json.loads, out.splitlines())
            }
        assert set(results["cancel"]) == set(results["claim"]) == set(ids)
        wins = assert_one_winner_per_task(store, ids, results)
        assert wins["cancel"] + wins["claim"] == len(ids)
    finally:
        store.close()


# -- the log's own optimistic concurrency -------------------------------------------------------


def test_append_with_a_stale_or_future_expected_version_is_a_conflict(tmp_path):
    log = SqliteLog(tmp_path / "log.db")
    other = SqliteLog(tmp_path / "log.db")
    try:
        stream = stream_id_for("t1")
        first = created(task_id="t1")
        log.append(stream, 0, [first], envelope())
        # Both writers read version 1; the other one appends first.
        other.append(stream, 1, [Cancelled(task_id="t1", at=at(1))], envelope())
        last = log.last_position()

        with pytest.raises(ConcurrencyConflict) as stale:
            log.append(stream, 1, [Cancelled(task_id="t1", at=at(2))], envelope())
        assert stale.value.message == "Stream task-t1 is at version 2, not 1"

        with pytest.raises(ConcurrencyConflict) as gap:
            log.append(stream, 3, [Cancelled(task_id="t1", at=at(2))], envelope())
        assert gap.value.message == "Stream task-t1 is at version 2, not 3"

        with pytest.raises(ConcurrencyConflict):  # a new stream starts at 0, not later
            log.append(stream_id_for("t2"), 1, [created(task_id="t2")], envelope())

        # Nothing of the refused appends was written.
        assert [r.version for r in log.read_stream(stream)] == [1, 2]
        assert log.read_stream(stream_id_for("t2")) == []
        assert log.last_position() == last == 2
        # The right version still goes through.
        (recorded,) = log.append(stream, 2, [Cancelled(task_id="t1", at=at(3))], envelope())
        assert (recorded.version, recorded.position) == (3, 3)
    finally:
        log.close()
        other.close()


def test_a_conflict_inside_a_transaction_rolls_back_its_earlier_writes(tmp_path):
    log = SqliteLog(tmp_path / "log.db")
    try:
        log.append(stream_id_for("t1"), 0, [created(task_id="t1")], envelope())
        with pytest.raises(ConcurrencyConflict):
            with log.transaction() as tx:
                log.append(stream_id_for("t2"), 0, [created(task_id="t2")], envelope(), tx=tx)
                log.append(stream_id_for("t1"), 0, [created(task_id="t1")], envelope(), tx=tx)
        assert log.read_stream(stream_id_for("t2")) == []
        assert [r.position for r in log.read_all()] == [1]
    finally:
        log.close()
