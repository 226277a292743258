"""Claims racing each other, and cancels racing claims: concurrent requests on one server (the
API served in process, which interleaves them on its event loop as ``taskledger serve`` does)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import httpx


def run_threads(targets, timeout: float = 120) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a racing thread did not finish"


def claimed_events(ledger) -> list[tuple[str, str]]:
    """(task_id, worker_id) of every claimed event, in log order."""
    rows = ledger.query("SELECT data FROM events WHERE type = 'claimed' ORDER BY position")
    return [(d["task_id"], d["worker_id"]) for d in map(json.loads, (r[0] for r in rows))]


def test_concurrent_claims_hand_each_task_to_one_worker_in_fifo_order(make_ledger_in_process):
    ledger = make_ledger_in_process()
    created = [ledger.create(b"fifo task %d" % n)["task_id"] for n in range(60)]
    barrier = threading.Barrier(8)
    got: dict[str, list[str]] = {}
    odd: list[tuple[str, int, str]] = []

    def claimer(worker_id: str) -> None:
        mine = got.setdefault(worker_id, [])
        with ledger.server.client(ledger.worker_key) as client:
            barrier.wait()
            while True:
                r = client.post(
                    "/worker/claim", json={"worker_id": worker_id, "lease_seconds": 600}
                )
                if r.status_code == 204:
                    return
                if r.status_code != 200:
                    odd.append((worker_id, r.status_code, r.text))
                    return
                task = r.json()
                if task["worker_id"] != worker_id or task["status"] != "Processing":
                    odd.append((worker_id, r.status_code, r.text))
                mine.append(task["task_id"])

    run_threads([lambda w=f"racer-{n}": claimer(w) for n in range(8)])

    assert odd == []
    handed_out = Counter(t for tasks in got.values() for t in tasks)
    assert [t for t, n in handed_out.items() if n > 1] == []  # no task handed to two workers
    assert set(handed_out) == set(created)  # none skipped
    events = claimed_events(ledger)
    assert [t for t, _ in events] == created  # FIFO: claimed in creation order, once each
    owner = {t: w for w, tasks in got.items() for t in tasks}
    assert all(owner[t] == w for t, w in events)  # the ledger agrees on who got what
    assert ledger.claim("late").status_code == 204


def test_cancel_racing_claim_has_exactly_one_winner_per_task(make_ledger_in_process):
    ledger = make_ledger_in_process()
    created = [ledger.create(b"race task %d" % n)["task_id"] for n in range(40)]
    barrier = threading.Barrier(2)
    cancels: dict[str, httpx.Response] = {}
    claims: list[httpx.Response] = []

    def canceller() -> None:
        with ledger.server.client(ledger.user_key) as client:
            barrier.wait()
            # Newest first while claims take the oldest first: the two meet somewhere in the
            # middle and fight over the same tasks there.
            for task_id in reversed(created):
                cancels[task_id] = client.get(f"/task/{task_id}/cancel")

    def claimer() -> None:
        with ledger.server.client(ledger.worker_key) as client:
            barrier.wait()
            while True:
                r = client.post(
                    "/worker/claim", json={"worker_id": "grabber", "lease_seconds": 600}
                )
                claims.append(r)
                if r.status_code != 200:
                    return

    run_threads([canceller, claimer])

    assert claims[-1].status_code == 204, claims[-1].text
    claimed = [r.json()["task_id"] for r in claims[:-1]]
    assert len(claimed) == len(set(claimed))
    won_cancel = {t for t, r in cancels.items() if r.status_code == 200}
    lost_cancel = {t for t, r in cancels.items() if r.status_code != 200}
    assert all(cancels[t].text == "Task cancelled" for t in won_cancel)
    assert {(cancels[t].status_code, cancels[t].text) for t in lost_cancel} <= {
        (400, "Task cannot be cancelled: status is Processing")
    }
    assert lost_cancel == set(claimed)  # a cancel lost exactly where the claim won
    assert won_cancel | lost_cancel == set(created)

    for task_id in created:
        types = ledger.types(task_id)
        status = ledger.status(task_id)
        if task_id in won_cancel:
            assert (status, types) == ("Cancelled", ["task_created", "cancelled"]), task_id
        else:
            assert (status, types) == ("Processing", ["task_created", "claimed"]), task_id
