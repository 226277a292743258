"""Owner isolation: another user's task is "Task not found" on every route, and stays untouched.

Each route is tried on a task in a state where the owner's own request would succeed, so a 404
cannot come from a status check that happens to refuse it first."""

from __future__ import annotations

import pytest


def not_found(response) -> None:
    assert (response.status_code, response.text) == (404, "Task not found")
    assert response.headers["content-type"].startswith("text/plain")


def snapshot(client, task_id: str) -> dict:
    got = client.get(f"/task/{task_id}")
    assert got.status_code == 200
    return got.json()


@pytest.fixture
def starting(alice, create):
    return create(alice)["task_id"]


@pytest.fixture
def succeeded(alice, create, ledger):
    task_id = create(alice)["task_id"]
    ledger.succeed(task_id)
    return task_id


ROUTES = {
    "get": ("starting", lambda c, t: c.get(f"/task/{t}")),
    "get_as_of_version": (
        "starting",
        lambda c, t: c.get(f"/task/{t}", params={"as_of_version": 1}),
    ),
    "get_input": ("starting", lambda c, t: c.get(f"/task/{t}/input")),
    "update": (
        "succeeded",
        lambda c, t: c.patch(f"/task/{t}/parse", json={"chunk_processing": {"target_length": 3}}),
    ),
    "cancel": ("starting", lambda c, t: c.get(f"/task/{t}/cancel")),
    "delete": ("succeeded", lambda c, t: c.delete(f"/task/{t}")),
    "cancel_idempotent": (
        "starting",
        lambda c, t: c.get(f"/task/{t}/cancel", headers={"Idempotency-Key": f"iso-{t}"}),
    ),
    "delete_idempotent": (
        "succeeded",
        lambda c, t: c.delete(f"/task/{t}", headers={"Idempotency-Key": f"iso-{t}"}),
    ),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_another_owners_task_is_not_found_and_unchanged(request, route, alice, bob, ledger):
    fixture, call = ROUTES[route]
    task_id = request.getfixturevalue(fixture)
    version = ledger.version(task_id)
    before = snapshot(alice, task_id)

    not_found(call(bob, task_id))

    assert ledger.version(task_id) == version
    after = snapshot(alice, task_id)
    assert after == before
    # The owner can still do what bob could not: the task really was in a state that allows it.
    response = call(alice, task_id)
    assert response.status_code == 200, response.text


def test_bobs_list_does_not_hold_alices_tasks(alice, bob, create):
    alices = {create(alice)["task_id"] for _ in range(2)}
    bobs = create(bob)["task_id"]
    listed = {t["task_id"] for t in bob.get("/tasks").json()}
    assert bobs in listed
    assert not listed & alices
    assert alices <= {t["task_id"] for t in alice.get("/tasks").json()}
    assert bobs not in {t["task_id"] for t in alice.get("/tasks").json()}


def test_time_filters_do_not_leak_other_owners_tasks(alice, bob, create):
    task = create(alice)
    listed = bob.get("/tasks", params={"start": task["created_at"], "limit": 1000}).json()
    assert task["task_id"] not in {t["task_id"] for t in listed}


def test_admin_sees_alices_task(admin, alice, create):
    task = create(alice)
    got = admin.get(f"/task/{task['task_id']}")
    assert got.status_code == 200
    assert got.json()["task_id"] == task["task_id"]
    listed = admin.get("/tasks", params={"limit": 1000}).json()
    assert task["task_id"] in {t["task_id"] for t in listed}


def test_a_worker_key_cannot_create_tasks(server, user_keys):
    with server.client(user_keys["worker"]) as worker:
        response = worker.post("/task/parse", json={"file": "aGk="})
        assert response.status_code == 403
        assert response.text == "A worker key cannot create tasks"
