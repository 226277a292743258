"""Several server processes on one database file.

Two topologies: ``taskledger serve --workers 2`` (uvicorn's worker processes, one port), and two
separate ``taskledger serve`` processes on different ports. Concurrent creates, cancels and
claims go through all of them; afterwards positions are unique and increasing, every stream's
versions are gapless, ``taskledger verify`` passes, every acknowledged write is there, and no
task is both cancelled and claimed. Then the sweepers of every process run side by side (every
0.2 s): each expired lease and each expired task gets exactly one event.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from reliability_support import (
    FILE,
    SOAK,
    Acks,
    add_key,
    assert_log_sound,
    assert_one_outcome,
    event_types,
    load_thread,
    query,
    survivors,
    wait_for,
)

THREADS = 8 if SOAK else 6
LOAD_WRITES = 2000 if SOAK else 300
SWEPT = 40 if SOAK else 12
FLAGS = ("--sweep-interval", "0.2", "--max-attempts", "2")


@pytest.fixture(params=["workers-2", "two-processes"])
def servers(request, serve, tmp_path):
    """The API URLs of the processes sharing one database, and the database."""
    db = tmp_path / "shared.db"
    if request.param == "workers-2":
        server = serve("--workers", "2", *FLAGS, db=db)
        return [server.api], db
    first = serve(*FLAGS, db=db)
    second = serve(*FLAGS, db=db)
    return [first.api, second.api], db


def test_concurrent_writes_through_every_process_keep_the_log_sound(servers):
    urls, db = servers
    alice, bob = add_key(db, "alice"), add_key(db, "bob")
    worker = add_key(db, "pool", "worker")
    acks, stop = Acks(), threading.Event()
    threads = [
        load_thread(urls, alice if i % 2 else bob, worker, acks, stop, name=f"c{i}", seed=i)
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: acks.total >= LOAD_WRITES, timeout=180, what=f"{LOAD_WRITES} writes")
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not acks.errors, acks.errors[:5]
    assert acks.failed == 0

    found, missing = survivors(db, acks)
    assert not missing, missing[:10]
    assert found == acks.total
    assert_one_outcome(db)
    assert_log_sound(db)


def claim_all(clients: list[httpx.Client], n: int, worker_id: str) -> list[str]:
    """Claim ``n`` tasks with a one-second lease, alternating between the processes."""
    claimed = []
    for i in range(n):
        response = clients[i % len(clients)].post(
            "/worker/claim", json={"worker_id": f"{worker_id}-{i}", "lease_seconds": 1}
        )
        assert response.status_code == 200, response.text
        claimed.append(response.json()["task_id"])
    return claimed


def test_sweepers_in_every_process_do_each_job_once(servers):
    urls, db = servers
    alice, worker = add_key(db, "alice"), add_key(db, "pool", "worker")
    users = [httpx.Client(base_url=u, headers={"Authorization": alice}, timeout=30) for u in urls]
    workers = [
        httpx.Client(base_url=u, headers={"Authorization": worker}, timeout=30) for u in urls
    ]
    try:
        # Tasks that expire one second after they finish (cancelled at once).
        expiring = []
        for i in range(SWEPT):
            created = users[i % len(users)].post(
                "/task/parse", json={"file": FILE, "file_name": "e.txt", "expires_in": 1}
            )
            assert created.status_code == 200, created.text
            task_id = created.json()["task_id"]
            assert users[(i + 1) % len(users)].get(f"/task/{task_id}/cancel").status_code == 200
            expiring.append(task_id)
        # Tasks claimed and abandoned twice: the first expiry re-queues, the second (max
        # attempts 2) times the task out.
        for i in range(SWEPT):
            created = users[i % len(users)].post("/task/parse", json={"file": FILE})
            assert created.status_code == 200, created.text
        abandoned = claim_all(workers, SWEPT, "first")

        def requeued() -> bool:
            rows = query(db, "SELECT count(*) FROM tasks WHERE status = 'Starting'")
            return rows[0][0] == SWEPT

        wait_for(requeued, timeout=30, what="every abandoned claim to be re-queued")
        again = claim_all(workers, SWEPT, "second")
        assert sorted(again) == sorted(abandoned)
        wait_for(
            lambda: query(db, "SELECT count(*) FROM tasks WHERE status = 'Failed'")[0][0] == SWEPT,
            timeout=30,
            what="every task abandoned twice to time out",
        )
        wait_for(
            lambda: query(db, "SELECT count(*) FROM tasks WHERE gone = 'expired'")[0][0] == SWEPT,
            timeout=30,
            what="every expiring task to expire",
        )
        time.sleep(1.0)  # several more sweeps in every process: room for a duplicate to appear

        for task_id in abandoned:
            assert event_types(db, task_id) == [
                "task_created",
                "claimed",
                "lease_expired",
                "claimed",
                "lease_expired",
                "timed_out",
            ], task_id
        for task_id in expiring:
            assert event_types(db, task_id) == ["task_created", "cancelled", "expired"], task_id
            assert users[0].get(f"/task/{task_id}").status_code == 404
        assert_log_sound(db)
    finally:
        for client in users + workers:
            client.close()
