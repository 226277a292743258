"""Leases: only the holder may act on a task; leases that keep running out time the task out;
claims long-poll an empty queue.

Served in process, but for the long poll a worker hangs up on: that one needs a real
``taskledger serve`` (a client-side read timeout closing the connection, which the server sees)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from scripts.processors import text_chunks


@pytest.fixture(scope="module")
def ledger(make_module_ledger_in_process):
    """Shared by the tests here; each leaves the queue empty (what it creates, it claims)."""
    return make_module_ledger_in_process()


def claim_new_task(ledger, holder: str, content: bytes = b"lease test words") -> str:
    task_id = ledger.create(content)["task_id"]
    claim = ledger.claim(holder, lease_seconds=600)
    assert claim.status_code == 200, claim.text
    assert claim.json()["task_id"] == task_id
    return task_id


NOT_HOLDER = {
    "heartbeat": {"lease_seconds": 600},
    "complete": {"output": text_chunks(b"lease test words", "input.txt", {})},
    "fail": {"error": "not mine to fail"},
    "release": {},
}


@pytest.mark.parametrize("action", list(NOT_HOLDER))
def test_a_worker_without_the_lease_gets_409_and_appends_nothing(ledger, action):
    task_id = claim_new_task(ledger, "holder")
    before = ledger.event_count()

    path, extra = f"/task/{task_id}/{action}", NOT_HOLDER[action]
    r = ledger.worker.post(path, json={"worker_id": "intruder", **extra})

    assert r.status_code == 409, r.text
    assert "intruder" in r.text and "does not hold the lease" in r.text
    assert ledger.event_count() == before
    task = ledger.get(task_id).json()
    assert task["status"] == "Processing"
    # The holder still can.
    r = ledger.worker.post(path, json={"worker_id": "holder", **extra})
    assert r.status_code == 200, r.text
    assert ledger.event_count() == before + 1
    if action == "release":  # back in the queue: take it again so the queue stays empty
        assert ledger.claim("holder").json()["task_id"] == task_id


def test_heartbeat_from_the_holder_extends_the_lease(ledger):
    task_id = claim_new_task(ledger, "holder")
    first = ledger.history(task_id)[-1][1]["lease_until"]

    r = ledger.worker.post(
        f"/task/{task_id}/heartbeat", json={"worker_id": "holder", "lease_seconds": 1200}
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["task_id"], body["worker_id"], body["attempt"]) == (task_id, "holder", 1)
    types = ledger.types(task_id)
    assert types == ["task_created", "claimed", "lease_extended"]
    assert ledger.history(task_id)[-1][1]["lease_until"] > first


def test_long_poll_returns_a_task_created_during_the_wait(ledger):
    result: dict[str, object] = {}

    def wait_for_claim() -> None:
        with ledger.server.client(ledger.worker_key) as client:
            started = time.monotonic()
            result["response"] = client.post(
                "/worker/claim",
                json={"worker_id": "poller", "wait_seconds": 5, "lease_seconds": 600},
            )
            result["elapsed"] = time.monotonic() - started

    poller = threading.Thread(target=wait_for_claim, daemon=True)
    poller.start()
    time.sleep(1.0)  # the claim is waiting on an empty queue
    task_id = ledger.create(b"arrives while a worker waits")["task_id"]
    poller.join(30)

    response = result["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.json()["task_id"] == task_id
    assert result["elapsed"] < 4.0  # answered when the task came, not when the wait ran out


def test_long_poll_on_an_empty_queue_returns_204_after_the_wait(ledger):
    started = time.monotonic()
    r = ledger.claim("poller", wait_seconds=2)
    elapsed = time.monotonic() - started

    assert r.status_code == 204, r.text
    assert r.content == b""
    assert elapsed >= 2.0 - 0.05  # it waited the whole wait (the server measures the same span)


def test_a_long_poll_abandoned_by_its_worker_claims_nothing(make_ledger):
    ledger = make_ledger()
    with httpx.Client(
        base_url=ledger.api,
        headers={"Authorization": ledger.worker_key},
        timeout=httpx.Timeout(10, read=0.5),
    ) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/worker/claim",
                json={"worker_id": "departed", "wait_seconds": 4, "lease_seconds": 600},
            )
    # The worker is gone (its connection closed) while the server-side wait still runs. A task
    # arriving within the same millisecond as the hang-up can still be claimed (the server cannot
    # know yet; the lease then runs out); once the server has seen the hang-up, nothing is.
    time.sleep(0.3)
    task_id = ledger.create(b"nobody is waiting for me")["task_id"]
    time.sleep(4.5)  # past the abandoned claim's wait

    assert [d["worker_id"] for t, d in ledger.history(task_id) if t == "claimed"] == []
    live = ledger.claim("present", lease_seconds=600)
    assert live.status_code == 200 and live.json()["task_id"] == task_id, live.text


def test_a_task_whose_leases_keep_running_out_times_out(make_ledger_in_process):
    ledger = make_ledger_in_process(max_attempts=2, sweep_interval=0.2)
    task_id = ledger.create(b"nobody finishes me")["task_id"]

    first = ledger.claim("sleepy-1", lease_seconds=1)
    assert first.status_code == 200 and first.json()["attempt"] == 1, first.text
    requeued = ledger.wait_status(task_id, "Starting", timeout=20)
    assert requeued["message"] == "Task re-queued: the worker's lease expired"

    second = ledger.claim("sleepy-2", lease_seconds=1)
    assert second.status_code == 200 and second.json()["attempt"] == 2, second.text
    failed = ledger.wait_status(task_id, "Failed", timeout=20)

    assert failed["message"] == "Task timed out"
    assert failed["finished_at"] is not None
    assert ledger.types(task_id) == [
        "task_created",
        "claimed",
        "lease_expired",
        "claimed",
        "lease_expired",
        "timed_out",
    ]
    late = ledger.worker.post(
        f"/task/{task_id}/complete",
        json={"worker_id": "sleepy-2", "output": text_chunks(b"too late", "input.txt", {})},
    )
    assert late.status_code == 409, late.text
    assert ledger.claim("sleepy-3").status_code == 204  # not re-queued a third time
