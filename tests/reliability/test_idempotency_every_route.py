"""Issue 14, item 3: an Idempotency-Key covers the whole request on every mutating route, the
worker routes included. The same key with another body (another worker_id, another lease, another
output) is 422 and changes nothing; the same key with the same body replays the first answer."""

from __future__ import annotations

import base64

import pytest

from tests.inprocess import add_key
from tests.support import chunkr_output

FILE = base64.b64encode(b"words for the worker").decode()


@pytest.fixture
def api(serve_in_process):
    server = serve_in_process(sweep_interval=0)
    user = server.client(add_key(server.db, "alice"))
    worker = server.client(add_key(server.db, "pool", "worker"))
    yield server, user, worker
    user.close()
    worker.close()


def event_count(server) -> int:
    import sqlite3

    with sqlite3.connect(server.db) as db:
        return db.execute("SELECT count(*) FROM events").fetchone()[0]


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def test_claim_with_the_same_key_and_another_worker_is_refused(api):
    server, user, worker = api
    task_id = user.post("/task/parse", json={"file": FILE}).json()["task_id"]
    first = worker.post("/worker/claim", json={"worker_id": "w-a"}, headers=keyed("c1"))
    assert first.status_code == 200 and first.json()["task_id"] == task_id
    before = event_count(server)
    for body in ({"worker_id": "w-b"}, {"worker_id": "w-a", "lease_seconds": 99}):
        other = worker.post("/worker/claim", json=body, headers=keyed("c1"))
        assert other.status_code == 422, other.text
        assert "Idempotency-Key was already used with a different request" in other.text
    again = worker.post("/worker/claim", json={"worker_id": "w-a"}, headers=keyed("c1"))
    assert again.status_code == 200 and again.json() == first.json()
    assert event_count(server) == before


@pytest.mark.parametrize(
    ("route", "first", "other"),
    [
        ("heartbeat", {"worker_id": "w-a"}, {"worker_id": "w-b"}),
        ("heartbeat", {"worker_id": "w-a", "lease_seconds": 60}, {"worker_id": "w-a"}),
        (
            "complete",
            {"worker_id": "w-a", "output": chunkr_output("a.txt", "one")},
            {"worker_id": "w-a", "output": chunkr_output("a.txt", "two")},
        ),
        ("fail", {"worker_id": "w-a", "error": "broken"}, {"worker_id": "w-a", "error": "other"}),
        ("release", {"worker_id": "w-a"}, {"worker_id": "w-b"}),
    ],
)
def test_a_worker_route_with_the_same_key_and_another_body_is_refused(api, route, first, other):
    server, user, worker = api
    task_id = user.post("/task/parse", json={"file": FILE}).json()["task_id"]
    claimed = worker.post("/worker/claim", json={"worker_id": "w-a"})
    assert claimed.status_code == 200 and claimed.json()["task_id"] == task_id
    done = worker.post(f"/task/{task_id}/{route}", json=first, headers=keyed("k1"))
    assert done.status_code == 200, done.text
    before = event_count(server)
    refused = worker.post(f"/task/{task_id}/{route}", json=other, headers=keyed("k1"))
    assert refused.status_code == 422, refused.text
    replayed = worker.post(f"/task/{task_id}/{route}", json=first, headers=keyed("k1"))
    assert replayed.status_code == 200 and replayed.json() == done.json()
    assert event_count(server) == before


def test_the_same_key_on_another_task_or_route_is_refused(api):
    server, user, worker = api
    first_id = user.post("/task/parse", json={"file": FILE}).json()["task_id"]
    second_id = user.post("/task/parse", json={"file": FILE}).json()["task_id"]
    assert user.get(f"/task/{first_id}/cancel", headers=keyed("u1")).status_code == 200
    before = event_count(server)
    assert user.get(f"/task/{second_id}/cancel", headers=keyed("u1")).status_code == 422
    assert user.delete(f"/task/{first_id}", headers=keyed("u1")).status_code == 422
    assert event_count(server) == before
