"""SIGTERM stops the reference worker cleanly: no new claims, the task in hand finished, exit 0."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest


def wait_exit(worker, timeout: float) -> int:
    try:
        return worker.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {timeout}s after SIGTERM:\n{worker.log()[-2000:]}")


def test_idle_worker_in_a_long_poll_exits_0_on_sigterm(make_ledger, spawn_worker):
    ledger = make_ledger()
    worker = spawn_worker(ledger, "--worker-id", "idler")
    ledger.wait_for(
        lambda: "worker_started" in worker.log(), timeout=30, what="the worker to start"
    )
    time.sleep(1.0)  # now in a long poll on the empty queue

    worker.signal(signal.SIGTERM)

    assert wait_exit(worker, 15) == 0
    assert "worker_stopped" in worker.log()
    assert ledger.query("SELECT count(*) FROM events WHERE type = 'claimed'") == [(0,)]


def test_task_claimed_after_sigterm_is_released_not_kept(make_ledger, spawn_worker):
    ledger = make_ledger()
    worker = spawn_worker(ledger, "--worker-id", "leaver")
    ledger.wait_for(
        lambda: "worker_started" in worker.log(), timeout=30, what="the worker to start"
    )
    time.sleep(1.0)  # in a long poll on the empty queue

    worker.signal(signal.SIGTERM)
    task_id = ledger.create(b"arrives while the worker is stopping")["task_id"]

    assert wait_exit(worker, 15) == 0
    task = ledger.get(task_id).json()
    assert task["status"] == "Starting"  # back in the queue (or never taken), not stuck
    history = ledger.history(task_id)
    if len(history) > 1:  # the stopping worker's poll picked it up: it must have given it back
        assert [t for t, _ in history] == ["task_created", "claimed", "lease_expired"]
        assert history[-1][1]["reason"] == "released"
        assert task["message"] == "Task re-queued: the worker released it"
    assert ledger.claim("next", lease_seconds=600).json()["task_id"] == task_id


def test_worker_mid_task_finishes_it_then_exits_0_on_sigterm(
    make_ledger, spawn_worker, processor_module, tmp_path
):
    ledger = make_ledger()
    slow = processor_module("slow_for_sigterm", 2)
    worker = spawn_worker(
        ledger, "--worker-id", "finisher", "--processor", slow, pythonpath=[tmp_path]
    )
    task_id = ledger.create(b"one two three four five six seven")["task_id"]
    ledger.wait_status(task_id, "Processing", timeout=30)

    signalled_at = datetime.now(UTC)
    worker.signal(signal.SIGTERM)

    assert wait_exit(worker, 30) == 0
    task = ledger.get(task_id).json()
    assert task["status"] == "Succeeded", task
    assert [c["chunk_length"] for c in task["output"]["chunks"]] == [7]
    assert [t for t in ledger.types(task_id) if t != "lease_extended"] == [
        "task_created",
        "claimed",
        "succeeded",
    ]
    finished = ledger.query(
        "SELECT recorded_at FROM events WHERE stream_id = ? AND type = 'succeeded'",
        (f"task-{task_id}",),
    )[0][0]
    assert datetime.fromisoformat(finished) > signalled_at  # the signal came mid-task
