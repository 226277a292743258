"""``GET /metrics`` of a real ``taskledger serve`` after a known workload: the counters (events
appended by type, requests by route, lease expiries, idempotent replays), the gauges read from
the database (tasks by status, the claimable queue) and who may read them. With ``--workers 2``
a scrape, whichever process answers it, adds up both processes' counters."""

from __future__ import annotations

import glob
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inprocess import add_key
from tests.pg import drop_database, new_database
from tests.server import Server

FILE = "aGVsbG8="  # b"hello"
CREATE = "/api/v1/task/parse"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server, key: str | None) -> Samples:
    headers = {"Authorization": key} if key else {}
    # A new connection each time: under --workers N any process may answer.
    response = httpx.get(f"{server.url}/metrics", headers={**headers, "Connection": "close"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def requests(samples: Samples, method: str, path: str, status: str = "200") -> float:
    return value(
        samples, "taskledger_http_requests_total", method=method, path=path, status_code=status
    )


def wait_for(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


@pytest.fixture
def served(db_backend, tmp_path_factory):
    """Start servers on fresh databases of the backend under test; stop them at the end."""
    started: list[tuple[Server, Path | str]] = []

    def serve(*flags: str) -> Server:
        db = new_database(db_backend, tmp_path_factory)
        server = Server(db, *flags, workdir=tmp_path_factory.mktemp("serve")).start()
        started.append((server, db))
        return server

    yield serve
    for server, db in started:
        server.stop()
        drop_database(db)


def test_the_counters_and_gauges_match_a_known_workload(served):
    server = served("--sweep-interval", "0.2")
    admin = server.admin_key
    alice, worker = add_key(server.db, "alice"), add_key(server.db, "pool", "worker")
    with server.client(alice) as user, server.client(worker) as pool:
        once = {"Idempotency-Key": "first"}
        ids = [user.post("/task/parse", json={"file": FILE}, headers=once).json()["task_id"]]
        replay = user.post("/task/parse", json={"file": FILE}, headers=once)
        assert replay.json()["task_id"] == ids[0]
        ids += [user.post("/task/parse", json={"file": FILE}).json()["task_id"] for _ in range(4)]

        def claim(lease: int = 3600) -> str:
            response = pool.post("/worker/claim", json={"worker_id": "w1", "lease_seconds": lease})
            assert response.status_code == 200, response.text
            return response.json()["task_id"]

        assert claim() == ids[0]
        done = pool.post(
            f"/task/{ids[0]}/complete", json={"worker_id": "w1", "output": {"chunks": []}}
        )
        assert done.status_code == 200, done.text
        assert claim() == ids[1]
        assert pool.post(f"/task/{ids[1]}/fail", json={"worker_id": "w1", "error": "x"}).is_success
        assert claim(lease=1) == ids[2]  # left to expire: the sweeper re-queues it
        assert user.get(f"/task/{ids[3]}/cancel").status_code == 200
        assert user.get(f"/task/{ids[4]}").status_code == 200

    def swept() -> Samples | None:
        samples = scrape(server, admin)
        return samples if value(samples, "taskledger_leases_expired_total") else None

    samples = wait_for(swept)
    assert samples, "the lease was not swept"
    assert value(samples, "taskledger_leases_expired_total") == 1
    appended = {
        dict(labels)["type"]: v
        for (name, labels), v in samples.items()
        if name == "taskledger_events_appended_total"
    }
    assert appended == {
        "task_created": 5,
        "claimed": 3,
        "succeeded": 1,
        "failed": 1,
        "lease_expired": 1,
        "cancelled": 1,
    }
    assert value(samples, "taskledger_idempotent_replays_total") == 1
    # Requests by route template (a task id is never a label), method and status.
    assert requests(samples, "POST", CREATE) == 6
    assert requests(samples, "POST", "/api/v1/worker/claim") == 3
    assert requests(samples, "GET", "/api/v1/task/{task_id}") == 1
    assert requests(samples, "GET", "/api/v1/task/{task_id}/cancel") == 1
    assert value(samples, "taskledger_http_request_duration_seconds_count", path=CREATE) == 6
    # Group commit: every command appended through a committed batch.
    assert value(samples, "taskledger_commit_batch_size_sum") >= 9
    assert value(samples, "taskledger_commit_duration_seconds_count") >= 1
    # Read from the database when scraped.
    tasks = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "taskledger_tasks"
    }
    assert tasks == {"Starting": 2, "Processing": 0, "Succeeded": 1, "Failed": 1, "Cancelled": 1}
    assert value(samples, "taskledger_queue_depth") == 2
    # The head of the queue is the oldest of the two: ids[2], re-queued.
    assert 0 < value(samples, "taskledger_queue_oldest_age_seconds") < 120


def test_metrics_need_an_admin_key_unless_public(served):
    server = served("--sweep-interval", "0")
    alice = add_key(server.db, "alice")
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "nope"}).status_code == 401
    refused = httpx.get(f"{server.url}/metrics", headers={"Authorization": alice})
    assert refused.status_code == 403, refused.text
    assert "taskledger_" not in refused.text
    scrape(server, server.admin_key)
    ready = httpx.get(f"{server.url}/ready")
    assert (ready.status_code, ready.text) == (200, "Ready")

    public = served("--sweep-interval", "0", "--metrics-public")
    assert value(scrape(public, None), "taskledger_queue_depth") == 0


def test_with_two_workers_a_scrape_adds_up_both_processes(served):
    before = set(glob.glob(f"{tempfile.gettempdir()}/taskledger-metrics-*"))
    server = served("--sweep-interval", "0", "--workers", "2")
    alice = add_key(server.db, "alice")
    creates = 24
    for _ in range(creates):  # a connection each: the kernel spreads them over both processes
        response = httpx.post(
            f"{server.api}/task/parse",
            json={"file": FILE},
            headers={"Authorization": alice, "Connection": "close"},
        )
        assert response.status_code == 200, response.text
    for _ in range(6):  # whichever process answers, the same totals
        samples = scrape(server, server.admin_key)
        assert value(samples, "taskledger_events_appended_total", type="task_created") == creates
        assert requests(samples, "POST", CREATE) == creates
        assert value(samples, "taskledger_queue_depth") == creates
        assert value(samples, "taskledger_tasks", status="Starting") == creates
    made = set(glob.glob(f"{tempfile.gettempdir()}/taskledger-metrics-*")) - before
    assert len(made) == 1  # the server's private directory ...
    server.stop()
    assert not any(Path(d).exists() for d in made)  # ... removed when it stops


def test_rate_limited_requests_are_counted(served):
    server = served("--sweep-interval", "0", "--rate-limit", "0.01", "--rate-limit-burst", "2")
    alice = add_key(server.db, "alice")
    with server.client(alice) as user:
        statuses = [user.get("/tasks").status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    samples = scrape(server, server.admin_key)
    assert value(samples, "taskledger_rate_limited_requests_total", reason="requests") == 2
    assert requests(samples, "GET", "/api/v1/tasks", "429") == 2
