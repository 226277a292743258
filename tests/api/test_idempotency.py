"""Idempotency-Key on mutating routes: a retry gets the original response and appends nothing."""

from __future__ import annotations

import base64
import threading
import uuid

import httpx

BODY = {"file": base64.b64encode(b"idempotent\n").decode(), "file_name": "a.txt"}


def key() -> str:
    return f"idem-{uuid.uuid4().hex}"


def test_create_retried_with_the_same_key_creates_once(alice, ledger):
    k = key()
    first = alice.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
    second = alice.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.json()["task_id"] == first.json()["task_id"]
    assert ledger.count_type("task_created", idempotency_key=k) == 1
    assert ledger.event_types(first.json()["task_id"]) == ["task_created"]


def test_without_a_key_each_create_is_a_new_task(alice, ledger):
    before = ledger.count_type("task_created")
    ids = {alice.post("/task/parse", json=BODY).json()["task_id"] for _ in range(2)}
    assert len(ids) == 2
    assert ledger.count_type("task_created") == before + 2


def test_same_key_with_a_different_body_is_422(alice, ledger):
    k = key()
    first = alice.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
    assert first.status_code == 200
    events = ledger.count("events")
    other = alice.post(
        "/task/parse", json={**BODY, "file_name": "b.txt"}, headers={"Idempotency-Key": k}
    )
    assert other.status_code == 422
    assert other.text == "Idempotency-Key was already used with a different request; use a new key"
    assert ledger.count("events") == events
    # The original is still what a faithful retry gets.
    again = alice.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
    assert again.content == first.content


def test_keys_belong_to_their_api_key(alice, bob, ledger):
    k = key()
    mine = alice.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
    theirs = bob.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["task_id"] != theirs.json()["task_id"]
    assert ledger.count_type("task_created", idempotency_key=k) == 2
    assert bob.get(f"/task/{mine.json()['task_id']}").status_code == 404


def test_concurrent_identical_creates_make_one_task(server, user_keys, ledger):
    k = key()
    n = 8
    barrier = threading.Barrier(n)
    results: list[httpx.Response | BaseException] = [None] * n  # type: ignore[list-item]

    def send(i: int) -> None:
        try:
            with server.client(user_keys["alice"]) as client:
                barrier.wait(10)
                results[i] = client.post("/task/parse", json=BODY, headers={"Idempotency-Key": k})
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, httpx.Response) for r in results), results
    assert [r.status_code for r in results] == [200] * n, [r.text for r in results]
    assert len({r.json()["task_id"] for r in results}) == 1
    assert len({r.content for r in results}) == 1
    assert ledger.count_type("task_created", idempotency_key=k) == 1


def test_cancel_retried_with_a_key_answers_200_both_times(alice, create, ledger):
    task = create(alice)
    k = key()
    url = f"/task/{task['task_id']}/cancel"
    first = alice.get(url, headers={"Idempotency-Key": k})
    second = alice.get(url, headers={"Idempotency-Key": k})
    assert (first.status_code, first.text) == (200, "Task cancelled")
    assert (second.status_code, second.text) == (200, "Task cancelled")
    assert ledger.event_types(task["task_id"]) == ["task_created", "cancelled"]
    # Without the key, a second cancel is the contract's 400.
    third = alice.get(url)
    assert (third.status_code, third.text) == (400, "Task cannot be cancelled: status is Cancelled")


def test_update_retried_with_a_key_updates_once(alice, create, ledger):
    task = create(alice)
    ledger.succeed(task["task_id"])
    k = key()
    url = f"/task/{task['task_id']}/parse"
    patch = {"chunk_processing": {"target_length": 11}}
    first = alice.patch(url, json=patch, headers={"Idempotency-Key": k})
    second = alice.patch(url, json=patch, headers={"Idempotency-Key": k})
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert first.json()["message"] == "Task queued for update"
    assert ledger.event_types(task["task_id"]).count("update_requested") == 1


def test_delete_retried_with_a_key_answers_200_both_times(alice, create, ledger):
    task = create(alice)
    alice.get(f"/task/{task['task_id']}/cancel")
    k = key()
    first = alice.delete(f"/task/{task['task_id']}", headers={"Idempotency-Key": k})
    second = alice.delete(f"/task/{task['task_id']}", headers={"Idempotency-Key": k})
    assert (first.status_code, first.text) == (200, "Task deleted")
    assert (second.status_code, second.text) == (200, "Task deleted")
    assert ledger.event_types(task["task_id"]).count("deleted") == 1
