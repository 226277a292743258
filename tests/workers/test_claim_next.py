"""``claim_next``: a worker finishing a task (complete or fail) can claim its next one in the
same request. The finish is decided first and stands on its own; the claim follows the rules of
a plain claim (oldest claimable first, the worker's lease), is never covered by the finish's
Idempotency-Key, and answers ``next: null`` when nothing is waiting."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from scripts.processors import text_chunks


@pytest.fixture(scope="module")
def ledger(make_module_ledger_in_process):
    """Shared by the tests here (served in process); each leaves the queue empty. The
    reference worker's test has a real server of its own."""
    return make_module_ledger_in_process()


def output_for(content: bytes) -> dict:
    return text_chunks(content, "input.txt", {})


def claimed(ledger, worker_id: str) -> str:
    response = ledger.claim(worker_id, lease_seconds=600)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def finish_off(ledger, held: tuple[str, str], queued: str) -> None:
    """Leave the queue empty for the next test: fail the task ``held`` (id, worker) and the
    ``queued`` one (claimed first)."""
    task_id, holder = held
    ledger.worker.post(f"/task/{task_id}/fail", json={"worker_id": holder, "error": "cleanup"})
    assert claimed(ledger, "w-cleanup") == queued
    ledger.worker.post(f"/task/{queued}/fail", json={"worker_id": "w-cleanup", "error": "cleanup"})


def test_complete_claims_the_oldest_waiting_task_for_the_same_worker(ledger):
    first = ledger.create(b"first task")["task_id"]
    second = ledger.create(b"second task")["task_id"]
    third = ledger.create(b"third task")["task_id"]
    assert claimed(ledger, "w-next") == first

    before = time.time()
    r = ledger.worker.post(
        f"/task/{first}/complete",
        json={
            "worker_id": "w-next",
            "output": output_for(b"first task"),
            "claim_next": True,
            "lease_seconds": 120,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task_id"] == first and body["status"] == "Succeeded"
    assert body["output"]["chunks"], "the finished task's answer is unchanged"
    following = body["next"]
    assert following["task_id"] == second
    assert following["status"] == "Processing" and following["worker_id"] == "w-next"
    assert following["attempt"] == 1
    lease = datetime.fromisoformat(following["lease_until"].replace("Z", "+00:00")).timestamp()
    assert before + 100 < lease < time.time() + 140  # the lease asked for, not the default
    assert ledger.types(first)[-1] == "succeeded"
    assert ledger.types(second)[-1] == "claimed"
    assert ledger.history(second)[-1][1]["worker_id"] == "w-next"

    # fail with claim_next hands over the third; with the queue then empty, next is null.
    r = ledger.worker.post(
        f"/task/{second}/fail",
        json={"worker_id": "w-next", "error": "unreadable", "claim_next": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "Failed" and r.json()["next"]["task_id"] == third
    r = ledger.worker.post(
        f"/task/{third}/complete",
        json={"worker_id": "w-next", "output": output_for(b"third task"), "claim_next": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "Succeeded" and r.json()["next"] is None


def test_without_claim_next_the_answer_has_no_next_and_nothing_is_claimed(ledger):
    task_id = ledger.create(b"plain finish")["task_id"]
    waiting = ledger.create(b"still waiting")["task_id"]
    assert claimed(ledger, "w-plain") == task_id
    r = ledger.worker.post(
        f"/task/{task_id}/complete",
        json={"worker_id": "w-plain", "output": output_for(b"plain finish")},
    )
    assert r.status_code == 200 and "next" not in r.json()
    assert ledger.status(waiting) == "Starting"
    assert claimed(ledger, "w-plain") == waiting
    ledger.worker.post(f"/task/{waiting}/release", json={"worker_id": "w-plain"})
    assert claimed(ledger, "w-cleanup") == waiting
    ledger.worker.post(f"/task/{waiting}/fail", json={"worker_id": "w-cleanup", "error": "done"})


def test_a_refused_finish_claims_nothing(ledger):
    task_id = ledger.create(b"held by another")["task_id"]
    waiting = ledger.create(b"must stay queued")["task_id"]
    assert claimed(ledger, "holder") == task_id
    r = ledger.worker.post(
        f"/task/{task_id}/complete",
        json={"worker_id": "intruder", "output": output_for(b"x"), "claim_next": True},
    )
    assert r.status_code == 409, r.text
    assert ledger.status(waiting) == "Starting"
    finish_off(ledger, (task_id, "holder"), waiting)


def test_an_idempotent_retry_replays_the_finish_and_claims_no_second_task(ledger):
    task_id = ledger.create(b"idempotent finish")["task_id"]
    second = ledger.create(b"claimed once")["task_id"]
    third = ledger.create(b"not claimed by the retry")["task_id"]
    assert claimed(ledger, "w-idem") == task_id
    body = {"worker_id": "w-idem", "output": output_for(b"idempotent finish"), "claim_next": True}
    headers = {"Idempotency-Key": f"finish-{task_id}"}
    first = ledger.worker.post(f"/task/{task_id}/complete", json=body, headers=headers)
    assert first.status_code == 200 and first.json()["next"]["task_id"] == second
    retry = ledger.worker.post(f"/task/{task_id}/complete", json=body, headers=headers)
    assert retry.status_code == 200
    # The stored answer is the finish's own (the key covers the finish, not the claim after
    # it), and the retry claims nothing: the third task is still queued.
    assert retry.json()["task_id"] == task_id and retry.json()["status"] == "Succeeded"
    assert "next" not in retry.json()
    assert ledger.status(third) == "Starting"
    assert ledger.types(task_id).count("succeeded") == 1
    finish_off(ledger, (second, "w-idem"), third)


def test_claim_next_is_in_the_schema_and_checked(ledger):
    spec = ledger.worker.get(f"{ledger.url}/docs/openapi.json").json()
    complete = spec["paths"]["/api/v1/task/{task_id}/complete"]["post"]
    body_ref = complete["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body_schema = spec["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    assert body_schema["properties"]["claim_next"]["type"] == "boolean"
    ok_ref = complete["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    ok_schema = spec["components"]["schemas"][ok_ref.rsplit("/", 1)[-1]]
    assert "next" in ok_schema["properties"]
    task_id = ledger.create(b"bad flag")["task_id"]
    assert claimed(ledger, "w-bad") == task_id
    r = ledger.worker.post(
        f"/task/{task_id}/complete",
        content=json.dumps(
            {"worker_id": "w-bad", "output": output_for(b"bad flag"), "claim_next": "yes"}
        ),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert "claim_next" in r.text
    assert ledger.status(task_id) == "Processing"
    # A next lease over the server's limit is refused before the finish runs.
    r = ledger.worker.post(
        f"/task/{task_id}/complete",
        json={
            "worker_id": "w-bad",
            "output": output_for(b"bad flag"),
            "claim_next": True,
            "lease_seconds": 10**9,
        },
    )
    assert r.status_code == 400 and "lease_seconds must be at most" in r.text, r.text
    assert ledger.status(task_id) == "Processing"
    # A next lease without claim_next would be ignored: it is refused instead.
    r = ledger.worker.post(
        f"/task/{task_id}/complete",
        json={"worker_id": "w-bad", "output": output_for(b"bad flag"), "lease_seconds": 30},
    )
    assert r.status_code == 400 and "give it with claim_next" in r.text, r.text
    assert ledger.status(task_id) == "Processing"
    ledger.worker.post(f"/task/{task_id}/fail", json={"worker_id": "w-bad", "error": "cleanup"})


def test_the_reference_worker_takes_its_next_task_from_the_finish(make_ledger, spawn_worker):
    """A worker that finishes a task while others wait claims the next in the same request:
    that task's Claimed event has the request id of the previous task's Succeeded event."""
    ledger = make_ledger()
    ids = [ledger.create(f"queued task {n} words".encode())["task_id"] for n in range(4)]
    worker = spawn_worker(ledger, "--concurrency", "1")
    try:
        for task_id in ids:
            ledger.wait_status(task_id, "Succeeded", timeout=60)
    finally:
        worker.stop()
    rows = ledger.query(
        "SELECT stream_id, type, request_id FROM events WHERE type IN ('claimed', 'succeeded')"
        " ORDER BY position"
    )
    finished_by = {req: stream for stream, type_, req in rows if type_ == "succeeded"}
    claimed_in_a_finish = [
        stream
        for stream, type_, req in rows
        if type_ == "claimed" and req in finished_by and finished_by[req] != stream
    ]
    # The first task comes from a plain claim; each later one from the finish before it.
    assert len(claimed_in_a_finish) == len(ids) - 1, rows
