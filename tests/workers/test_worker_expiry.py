"""Expiry: a finished task past expires_at becomes 404, loses its blobs, and keeps its history
(with an ``expired`` event appended by the sweeper)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from scripts.processors import text_chunks


def unique_content(label: str) -> bytes:
    # Unique bytes, so no other task shares (and so keeps) this task's blobs.
    return f"{label} {uuid.uuid4()} alpha beta gamma delta epsilon zeta eta theta".encode()


def finish(ledger, outcome: str) -> tuple[str, bytes]:
    """Create a task with expires_in=1 and drive it to ``outcome``."""
    content = unique_content(outcome)
    task = ledger.create(content, file_name=f"{outcome.lower()}.txt", expires_in=1)
    task_id = task["task_id"]
    assert task["configuration"]["expires_in"] == 1
    sha = hashlib.sha256(content).hexdigest()
    # The input blob is stored and referenced while the task lives (checked before the task
    # finishes, so before its expiry clock starts).
    assert ledger.query("SELECT count(*) FROM blob_refs WHERE task_id = ?", (task_id,)) == [(1,)]
    assert ledger.query("SELECT count(*) FROM blobs WHERE sha256 = ?", (sha,)) == [(1,)]

    if outcome == "Cancelled":
        r = ledger.user.get(f"/task/{task_id}/cancel")
    else:
        claim = ledger.claim("expiry-worker", lease_seconds=600)
        assert claim.status_code == 200 and claim.json()["task_id"] == task_id, claim.text
        if outcome == "Succeeded":
            chunking = {"chunk_processing": {"target_length": 3}}
            output = text_chunks(content, f"{outcome.lower()}.txt", chunking)
            r = ledger.worker.post(
                f"/task/{task_id}/complete", json={"worker_id": "expiry-worker", "output": output}
            )
        else:
            r = ledger.worker.post(
                f"/task/{task_id}/fail", json={"worker_id": "expiry-worker", "error": "boom"}
            )
    assert r.status_code == 200, r.text
    return task_id, content


@pytest.fixture(scope="module")
def ledger(make_module_ledger_in_process):
    """Served in process; the sweeper runs every 0.2 s (``--sweep-interval 0.2``)."""
    return make_module_ledger_in_process(sweep_interval=0.2)


@pytest.mark.parametrize(
    "outcome, lived",
    [
        ("Succeeded", ["task_created", "claimed", "succeeded"]),
        ("Failed", ["task_created", "claimed", "failed"]),
        ("Cancelled", ["task_created", "cancelled"]),
    ],
)
def test_expired_task_is_gone_but_its_history_stays(ledger, outcome, lived):
    task_id, content = finish(ledger, outcome)
    history = ledger.history(task_id)
    blob_shas = {hashlib.sha256(content).hexdigest()} | {
        d["output"]["sha256"] for t, d in history if t == "succeeded"
    }
    assert len(blob_shas) == (2 if outcome == "Succeeded" else 1)

    ledger.wait_for(
        lambda: ledger.types(task_id)[-1:] == ["expired"], timeout=15, what="the expired event"
    )

    response = ledger.get(task_id)
    assert (response.status_code, response.text) == (404, "Task not found")
    assert ledger.query("SELECT count(*) FROM blob_refs WHERE task_id = ?", (task_id,)) == [(0,)]
    for sha in blob_shas:
        assert ledger.query("SELECT count(*) FROM blobs WHERE sha256 = ?", (sha,)) == [(0,)]
    after = ledger.history(task_id)
    assert [t for t, _ in after] == [*lived, "expired"]
    assert after[: len(history)] == history  # nothing rewritten, only appended
    assert ledger.claim("expiry-worker").status_code == 204
