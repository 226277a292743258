"""A worker killed with SIGKILL mid-task: its lease runs out, another worker finishes the task,
and the dead worker's late answer is refused without touching the ledger."""

from __future__ import annotations

import signal

from scripts.processors import text_chunks

CONTENT = b" ".join(b"crash%02d" % n for n in range(40))


def test_killed_worker_loses_its_lease_and_its_late_complete(
    make_ledger, spawn_worker, processor_module, tmp_path
):
    ledger = make_ledger("--sweep-interval", "0.2")
    slow = processor_module("slow_for_crash", 30)
    task_id = ledger.create(CONTENT, chunk_processing={"target_length": 10})["task_id"]

    doomed = spawn_worker(
        ledger,
        "--worker-id",
        "doomed",
        "--lease-seconds",
        "2",
        "--processor",
        slow,
        pythonpath=[tmp_path],
    )
    ledger.wait_status(task_id, "Processing", timeout=30)
    claimed = [data for type_, data in ledger.history(task_id) if type_ == "claimed"]
    assert [c["worker_id"] for c in claimed] == ["doomed/0"]

    doomed.signal(signal.SIGKILL)
    doomed.wait(10)
    # No heartbeats any more: the sweeper expires the 2 s lease and re-queues the task.
    ledger.wait_for(
        lambda: "lease_expired" in ledger.types(task_id), timeout=20, what="the lease to expire"
    )
    assert ledger.status(task_id) == "Starting"

    spawn_worker(ledger, "--worker-id", "rescuer")
    finished = ledger.wait_status(task_id, "Succeeded", "Failed", timeout=30)
    assert finished["status"] == "Succeeded"
    assert len(finished["output"]["chunks"]) == 4  # 40 words, target_length 10

    before = ledger.event_count()
    stale_output = text_chunks(CONTENT, "input.txt", {"chunk_processing": {"target_length": 1}})
    late = ledger.worker.post(
        f"/task/{task_id}/complete", json={"worker_id": "doomed/0", "output": stale_output}
    )
    assert late.status_code == 409, late.text
    assert ledger.event_count() == before
    after = ledger.get(task_id).json()
    assert after["status"] == "Succeeded"
    assert len(after["output"]["chunks"]) == 4  # the rescuer's output, not the stale one

    history = ledger.history(task_id)
    assert [t for t, _ in history if t != "lease_extended"] == [
        "task_created",
        "claimed",
        "lease_expired",
        "claimed",
        "succeeded",
    ]
    workers = [(t, d.get("worker_id")) for t, d in history if t in ("claimed", "succeeded")]
    assert workers == [
        ("claimed", "doomed/0"),
        ("claimed", "rescuer/0"),
        ("succeeded", "rescuer/0"),
    ]
