"""One winner per conflict.

Many clients race on the same tasks at once: cancel against claim, update against update,
complete against the sweeper's lease expiry. Every decision has exactly one outcome in the
history, the winner got a 2xx, every loser got a clean 4xx saying why, and the responses agree
with the log.

The server runs in process (``serve_in_process``): the races are between concurrent requests
on one server, which the in-process app interleaves on its event loop as ``taskledger serve``
does.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from reliability_support import FILE, SOAK, add_key, assert_log_sound, event_types, query, wait_for

TASKS = 120 if SOAK else 30
CLIENTS = 16


def clients(server, key: str, n: int) -> list[httpx.Client]:
    return [server.client(key) for _ in range(n)]


def create_tasks(server, key: str, n: int) -> list[str]:
    with server.client(key) as c:
        ids = []
        for i in range(n):
            response = c.post("/task/parse", json={"file": FILE, "file_name": f"t{i}.txt"})
            assert response.status_code == 200, response.text
            ids.append(response.json()["task_id"])
        return ids


def all_at_once(calls: list) -> list:
    """Run ``calls`` on CLIENTS threads, the first CLIENTS of them released together."""
    go = threading.Event()

    def run(call):
        go.wait(10)
        return call()

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(run, call) for call in calls]
        time.sleep(0.2)  # let every thread of the pool reach the gate
        go.set()
        return [f.result() for f in futures]


def test_cancel_against_claim_has_one_winner(serve_in_process):
    server = serve_in_process(sweep_interval=0)
    alice, worker = add_key(server.db, "alice"), add_key(server.db, "pool", "worker")
    ids = create_tasks(server, alice, TASKS)
    users, workers = clients(server, alice, CLIENTS), clients(server, worker, CLIENTS)
    rng = random.Random(1)
    calls = []
    for i, task_id in enumerate(ids):
        user = users[i % CLIENTS]
        w = workers[i % CLIENTS]
        calls.append(lambda t=task_id, u=user: ("cancel", t, u.get(f"/task/{t}/cancel")))
        calls.append(
            lambda w=w, i=i: ("claim", None, w.post("/worker/claim", json={"worker_id": f"w{i}"}))
        )
    rng.shuffle(calls)
    results = all_at_once(calls)

    cancelled = {t for kind, t, r in results if kind == "cancel" and r.status_code == 200}
    claimed = {
        r.json()["task_id"] for kind, _, r in results if kind == "claim" and r.status_code == 200
    }
    for kind, _task_id, response in results:
        if kind == "cancel" and response.status_code != 200:
            assert (response.status_code, response.text) == (
                400,
                "Task cannot be cancelled: status is Processing",
            )
        if kind == "claim":
            assert response.status_code in (200, 204), response.text
    assert not cancelled & claimed, "a task was both cancelled and claimed"
    assert cancelled | claimed == set(ids), "every task has an outcome"
    for task_id in ids:
        types = event_types(server.db, task_id)
        expected = ["task_created", "cancelled" if task_id in cancelled else "claimed"]
        assert types == expected, (task_id, types)
    assert_log_sound(server.db)
    for c in users + workers:
        c.close()


def succeed(server, worker_key: str, ids: list[str]) -> None:
    """Claim and complete every task in ``ids`` (the only tasks in the queue)."""
    with server.client(worker_key) as w:
        for _ in ids:
            claim = w.post("/worker/claim", json={"worker_id": "setup"})
            assert claim.status_code == 200, claim.text
            done = w.post(
                f"/task/{claim.json()['task_id']}/complete",
                json={"worker_id": "setup", "output": {"chunks": []}},
            )
            assert done.status_code == 200, done.text


def test_update_against_update_has_one_winner(serve_in_process):
    server = serve_in_process(sweep_interval=0)
    alice = add_key(server.db, "alice")
    admin, worker = add_key(server.db, "ops", "admin"), add_key(server.db, "pool", "worker")
    ids = create_tasks(server, alice, TASKS)
    succeed(server, worker, ids)
    callers = clients(server, alice, CLIENTS // 2) + clients(server, admin, CLIENTS // 2)
    calls = []
    for task_id in ids:
        for n, caller in enumerate(callers[:4]):
            length = 100 + n
            calls.append(
                lambda t=task_id, c=caller, n=length: (
                    t,
                    n,
                    c.patch(f"/task/{t}/parse", json={"chunk_processing": {"target_length": n}}),
                )
            )
    random.Random(2).shuffle(calls)
    results = all_at_once(calls)

    winners: dict[str, list[int]] = {}
    for task_id, length, response in results:
        if response.status_code == 200:
            winners.setdefault(task_id, []).append(length)
            body = response.json()
            assert body["status"] == "Starting"
            assert body["configuration"]["chunk_processing"]["target_length"] == length
        else:
            assert (response.status_code, response.text) == (
                400,
                "Task cannot be updated: status is Starting",
            )
    for task_id in ids:
        assert len(winners.get(task_id, [])) == 1, (task_id, winners.get(task_id))
        rows = query(
            server.db,
            "SELECT type, data FROM events WHERE stream_id = ? ORDER BY version",
            (f"task-{task_id}",),
        )
        types = [t for t, _ in rows]
        assert types == ["task_created", "claimed", "succeeded", "update_requested"], types
        stored = json.loads(rows[-1][1])["configuration"]["chunk_processing"]["target_length"]
        assert stored == winners[task_id][0]
    assert_log_sound(server.db)
    for c in callers:
        c.close()


def test_complete_against_lease_expiry_has_one_winner(serve_in_process):
    """Each task is claimed with a one-second lease and completed right around the moment the
    lease runs out, while the sweeper (every 50 ms) expires leases: either the completion wins
    (200, Succeeded, no expiry) or the expiry does (LeaseExpired, then 409 for the worker)."""
    server = serve_in_process(sweep_interval=0.05, max_attempts=1)
    alice, worker = add_key(server.db, "alice"), add_key(server.db, "pool", "worker")
    ids = create_tasks(server, alice, TASKS)
    workers = clients(server, worker, CLIENTS)
    rng = random.Random(3)
    delays = [rng.uniform(0.8, 1.4) for _ in ids]

    def claim_then_complete(i: int):
        w = workers[i % CLIENTS]
        worker_id = f"w{i}"
        claim = w.post("/worker/claim", json={"worker_id": worker_id, "lease_seconds": 1})
        assert claim.status_code == 200, claim.text
        time.sleep(delays[i])
        done = w.post(
            f"/task/{claim.json()['task_id']}/complete",
            json={"worker_id": worker_id, "output": {"chunks": []}},
        )
        return claim.json()["task_id"], done

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(claim_then_complete, range(len(ids))))
    assert sorted(t for t, _ in results) == sorted(ids)
    # Let the sweeper finish with whatever is left.
    wait_for(
        lambda: not query(server.db, "SELECT 1 FROM tasks WHERE status = 'Processing'"),
        timeout=30,
        what="no task left Processing",
    )
    outcomes = {"completed": 0, "expired": 0}
    for task_id, done in results:
        types = event_types(server.db, task_id)
        if done.status_code == 200:
            assert done.json()["status"] == "Succeeded"
            assert types == ["task_created", "claimed", "succeeded"], types
            outcomes["completed"] += 1
        else:
            assert done.status_code == 409, done.text
            assert done.text.startswith("Worker w"), done.text
            # max_attempts 1: the expiry times the task out (Failed), exactly once.
            assert types == ["task_created", "claimed", "lease_expired", "timed_out"], types
            outcomes["expired"] += 1
    assert_log_sound(server.db)
    print(f"\ncomplete vs lease expiry: {outcomes}")
    for c in workers:
        c.close()
