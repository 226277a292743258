"""Races between nodes: three ``taskledger serve`` processes on one PostgreSQL ledger, and
clients on many threads spread over them.

* Cancel against claim on 60 tasks from 32 threads: each task is either cancelled or claimed,
  never both, never neither; the winner got a 2xx, every loser a clean 400 or 204.
* Claims from many threads on every node take the queue in creation order, each task by one
  worker only.
* One create sent with the same Idempotency-Key to every node at once makes one task; every
  node answers with it.
* Every node sweeps every 50 ms: each lease that runs out is expired exactly once (one
  ``lease_expired`` event), however many nodes found it expired; the second node's command is
  decided against the task's state in its write transaction and refused (no events), which
  the nodes' ``swept`` log lines count as ``already_done``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from multinode_support import FILE, Cluster, create, wait_for

from tests.pg import needs_postgres

pytestmark = needs_postgres

#: Every node sweeps every 50 ms; a task whose lease runs out twice is timed out. (The races
#: take leases of the default 300 s: the sweepers leave them alone.)
NODE_FLAGS = ("--sweep-interval", "0.05", "--max-attempts", "2")
TASKS = 60
THREADS = 32
SWEPT = 24


def run_together(
    cluster: Cluster, calls: list[Callable[[dict[str, list[httpx.Client]]], Any]]
) -> list[Any]:
    """Run ``calls`` on THREADS threads, each with its own clients of every node (a user's and a
    worker's), released together; thread k runs calls k, k + THREADS, ... The answers come back
    in the order of ``calls``."""
    results: list[Any] = [None] * len(calls)
    gate = threading.Barrier(THREADS, timeout=30)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        clients = {
            "user": [node.client(cluster.keys["alice"]) for node in cluster.nodes],
            "worker": [node.client(cluster.keys["worker"]) for node in cluster.nodes],
        }
        try:
            gate.wait()
            for i in range(k, len(calls), THREADS):
                results[i] = calls[i](clients)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            for client in clients["user"] + clients["worker"]:
                client.close()

    threads = [threading.Thread(target=run, args=(k,), name=f"racer-{k}") for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)
    return results


def test_cancel_against_claim_across_nodes_has_one_outcome_per_task(cluster):
    with cluster.nodes[0].client(cluster.keys["alice"]) as alice:
        ids = [create(alice, f"race{i}.txt") for i in range(TASKS)]
    calls: list[Callable[[dict[str, list[httpx.Client]]], Any]] = []
    for i, task_id in enumerate(ids):
        calls.append(
            lambda c, t=task_id, n=i % 3: ("cancel", t, c["user"][n].get(f"/task/{t}/cancel"))
        )
        calls.append(
            lambda c, i=i, n=(i + 1) % 3: (
                "claim",
                f"racer-{i}",
                c["worker"][n].post("/worker/claim", json={"worker_id": f"racer-{i}"}),
            )
        )
    random.Random(60).shuffle(calls)
    results = run_together(cluster, calls)

    cancelled: set[str] = set()
    claimed: dict[str, str] = {}  # task id -> the worker the answer named
    for kind, subject, answer in results:
        if kind == "cancel":
            if answer.status_code == 200:
                cancelled.add(subject)
            else:
                assert (answer.status_code, answer.text) == (
                    400,
                    "Task cannot be cancelled: status is Processing",
                )
        elif answer.status_code == 200:
            task_id = answer.json()["task_id"]
            assert task_id not in claimed, f"{task_id} was claimed twice"
            assert answer.json()["worker_id"] == subject
            claimed[task_id] = subject
        else:
            assert answer.status_code == 204, answer.text
    assert not cancelled & set(claimed), "a task was both cancelled and claimed"
    assert cancelled | set(claimed) == set(ids), "a task has no outcome"

    # The log agrees: exactly one outcome event per task, the one its winner was told of.
    streams = cluster.streams()
    for task_id in ids:
        types = [type(r.event).__name__ for r in streams[task_id]]
        if task_id in cancelled:
            assert types == ["TaskCreated", "Cancelled"], (task_id, types)
        else:
            assert types == ["TaskCreated", "Claimed"], (task_id, types)
            assert streams[task_id][1].event.worker_id == claimed[task_id]
    counts = cluster.count_types(ids)
    assert counts["cancelled"] + counts["claimed"] == TASKS
    assert counts["cancelled"] == len(cancelled)
    statuses = cluster.statuses()
    assert {statuses[t] for t in cancelled} <= {"Cancelled"}
    assert {statuses[t] for t in claimed} <= {"Processing"}
    cluster.assert_log_sound(verify=False)  # verify runs at the module's end
    print(
        f"\ncancel against claim on {TASKS} tasks, {THREADS} threads over 3 nodes: "
        f"{len(cancelled)} cancelled, {len(claimed)} claimed"
    )


def test_claims_across_nodes_are_fifo_by_creation_and_one_worker_each(cluster):
    cluster.drain_queue()
    clients = [node.client(cluster.keys["bob"]) for node in cluster.nodes]
    try:
        # Created one after another through every node in turn: creation order is known.
        ids = [create(clients[i % 3], f"fifo{i}.txt") for i in range(45)]
    finally:
        for client in clients:
            client.close()
    first = min(r.position for r in cluster.events() if r.stream_id == f"task-{ids[0]}")

    def claim(worker_id: str, node: int) -> Callable[[dict[str, list[httpx.Client]]], Any]:
        return lambda c: (
            worker_id,
            c["worker"][node].post("/worker/claim", json={"worker_id": worker_id}),
        )

    # More claims than tasks, every worker id different, on every node.
    calls = [claim(f"fifo-{i}", i % 3) for i in range(len(ids) + 15)]
    results = run_together(cluster, calls)

    won = {w: a.json()["task_id"] for w, a in results if a.status_code == 200}
    assert all(a.status_code in (200, 204) for _, a in results), [
        a.text for _, a in results if a.status_code not in (200, 204)
    ]
    assert len(won) == len(ids), f"{len(won)} claims won for {len(ids)} tasks"
    assert sorted(won.values()) == sorted(ids), "each task went to exactly one worker"

    # In commit order, the claims took the tasks in the order they were created.
    claims = [r for r in cluster.events(first) if type(r.event).__name__ == "Claimed"]
    assert [r.event.task_id for r in claims] == ids
    assert {r.event.worker_id: r.event.task_id for r in claims} == won


def test_one_idempotency_key_sent_to_every_node_at_once_creates_one_task(cluster):
    keys = [f"same-everywhere-{i}" for i in range(20)]
    # The three sends of a key are neighbours in the list, so three threads run them together.
    calls = [
        lambda c, key=key, n=n: (
            key,
            c["user"][n].post(
                "/task/parse",
                json={"file": FILE, "file_name": f"{key}.txt"},
                headers={"Idempotency-Key": key},
            ),
        )
        for key in keys
        for n in range(3)
    ]
    results = run_together(cluster, calls)

    answers: dict[str, list[str]] = {}
    for key, answer in results:
        assert answer.status_code == 200, answer.text
        answers.setdefault(key, []).append(answer.json()["task_id"])
    made: dict[str, list[str]] = {}
    for recorded in cluster.events():
        if recorded.idempotency_key in answers and type(recorded.event).__name__ == "TaskCreated":
            made.setdefault(recorded.idempotency_key, []).append(recorded.event.task_id)
    for key in keys:
        assert len(set(answers[key])) == 1, (key, answers[key])
        assert made.get(key) == answers[key][:1], (key, made.get(key), answers[key])


def swept(cluster: Cluster) -> dict[int, Counter[str]]:
    """Per node, the sums of its sweep passes' counts (its ``swept`` log lines)."""
    sums: dict[int, Counter[str]] = {}
    for node in cluster.nodes:
        sums[node.n] = Counter()
        for line in node.log_lines():
            if '"swept"' in line:
                entry = json.loads(line)
                sums[node.n].update({k: v for k, v in entry.items() if isinstance(v, int)})
    return sums


def claim_each(cluster: Cluster, ids: list[str], worker_id: str, spacing: float) -> None:
    """Claim ``len(ids)`` tasks with a one-second lease, through the nodes in turn, one every
    ``spacing`` seconds (so the leases run out one after another, under different nodes'
    sweeps); they must be ``ids``, in order."""
    clients = [node.client(cluster.keys["worker"]) for node in cluster.nodes]
    try:
        for i, task_id in enumerate(ids):
            answer = clients[i % 3].post(
                "/worker/claim", json={"worker_id": f"{worker_id}-{i}", "lease_seconds": 1}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["task_id"] == task_id
            time.sleep(spacing)
    finally:
        for client in clients:
            client.close()


def test_every_node_sweeping_expires_each_lease_once(cluster):
    cluster.drain_queue()
    before = swept(cluster)
    with cluster.nodes[2].client(cluster.keys["alice"]) as alice:
        ids = [create(alice, f"lease{i}.txt") for i in range(SWEPT)]

    def statuses_are(status: str) -> bool:
        found = cluster.statuses()
        return all(found[t] == status for t in ids)

    # First expiry: re-queued (attempt 1 of 2).
    claim_each(cluster, ids, "first", spacing=0.04)
    wait_for(lambda: statuses_are("Starting"), timeout=30, what="every lease to run out once")
    # Second expiry: timed out (attempt 2 of 2). The re-queued tasks come back in expiry order,
    # which is the order they were claimed in.
    claim_each(cluster, ids, "second", spacing=0.04)
    wait_for(lambda: statuses_are("Failed"), timeout=30, what="every task to time out")
    time.sleep(0.5)  # ten more sweeps on every node: room for a second expiry to appear

    streams = cluster.streams()
    for task_id in ids:
        types = [type(r.event).__name__ for r in streams[task_id]]
        assert types == [
            "TaskCreated",
            "Claimed",
            "LeaseExpired",
            "Claimed",
            "LeaseExpired",
            "TimedOut",
        ], (task_id, types)
        expiries = [r.event for r in streams[task_id] if type(r.event).__name__ == "LeaseExpired"]
        assert [(e.attempt, e.worker_id.split("-")[0]) for e in expiries] == [
            (1, "first"),
            (2, "second"),
        ]
    counts = cluster.count_types(ids)
    assert counts["lease_expired"] == 2 * SWEPT
    assert counts["timed_out"] == SWEPT

    # What each node's sweeps did: between them, every expiry once.
    after = swept(cluster)
    by_node = {n: after[n] - before[n] for n in after}
    assert sum(c["leases_expired"] for c in by_node.values()) == 2 * SWEPT
    assert sum(c["timed_out"] for c in by_node.values()) == SWEPT
    winners = [n for n, c in by_node.items() if c["leases_expired"]]
    assert len(winners) >= 2, f"only node {winners} expired leases: {by_node}"
    cluster.assert_log_sound()
    print(
        f"\nsweeping on 3 nodes every 50 ms: {2 * SWEPT} lease expiries, one event each; "
        "per node (expired, of which timed out, found already done): "
        + ", ".join(
            f"node {n}: {c['leases_expired']}, {c['timed_out']}, {c['already_done']}"
            for n, c in sorted(by_node.items())
        )
    )
