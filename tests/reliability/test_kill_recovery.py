"""No acknowledged write is lost.

Client threads create tasks, cancel some and claim others (with a worker key) against a real
``taskledger serve``; the server is killed with SIGKILL in the middle of that load, then started
again on the same file with no repair step. Every request that got a 2xx must be in the log (and
in the projections), ``taskledger verify`` must pass, and the restarted server must serve.
Several rounds of load-and-kill run on the same database (TASKLEDGER_SOAK=1: many more).
"""

from __future__ import annotations

import random
import threading
import time

import httpx
from reliability_support import (
    FILE,
    SOAK,
    Acks,
    add_key,
    assert_log_sound,
    assert_one_outcome,
    load_thread,
    survivors,
    wait_for,
)

from tests.server import Server

ROUNDS = 12 if SOAK else 3
THREADS = 8 if SOAK else 6
#: Acknowledged writes each round must see before the kill, so the kill lands mid-load.
PER_ROUND = 400 if SOAK else 120


def test_sigkill_under_write_load_loses_no_acknowledged_write(tmp_path):
    db = tmp_path / "ledger.db"
    server = Server(db).start()
    keys = {
        "alice": add_key(db, "alice"),
        "bob": add_key(db, "bob"),
        "worker": add_key(db, "pool", "worker"),
    }
    acks = Acks()
    rng = random.Random(7)
    kills = 0
    try:
        for round_ in range(ROUNDS):
            stop = threading.Event()
            threads = [
                load_thread(
                    [server.api],
                    keys["alice"] if i % 2 == 0 else keys["bob"],
                    keys["worker"],
                    acks,
                    stop,
                    name=f"r{round_}c{i}",
                    seed=round_ * 100 + i,
                )
                for i in range(THREADS)
            ]
            before = acks.total
            for thread in threads:
                thread.start()
            wait_for(
                lambda before=before: acks.total >= before + PER_ROUND,
                timeout=120,
                what=f"{PER_ROUND} acknowledged writes in round {round_}",
                interval=0.02,
            )
            time.sleep(rng.uniform(0, 0.3))
            server.kill()  # SIGKILL, with the client threads still sending
            server.stop()  # (it is dead already: this only closes its log file)
            kills += 1
            stop.set()
            for thread in threads:
                thread.join(30)
            assert not any(t.is_alive() for t in threads)
            assert not acks.errors, acks.errors[:5]

            # Restart on the same file, no repair: everything acknowledged so far is there.
            server = Server(db).start()
            found, missing = survivors(db, acks)
            assert not missing, missing[:10]
            assert found == acks.total

        # Nothing holds two outcomes for one decision: a task is cancelled or claimed, not both.
        assert_one_outcome(db)
        assert_log_sound(db)

        # And the restarted server serves: a full create, read, cancel round.
        with httpx.Client(base_url=server.api, headers={"Authorization": keys["alice"]}) as alice:
            created = alice.post("/task/parse", json={"file": FILE, "file_name": "after.txt"})
            assert created.status_code == 200, created.text
            task_id = created.json()["task_id"]
            assert alice.get(f"/task/{task_id}").json()["status"] == "Starting"
            assert alice.get(f"/task/{task_id}/cancel").status_code == 200
    finally:
        server.stop()

    print(
        f"\ncrash test: {kills} SIGKILLs, {acks.sent} writes sent, {acks.total} acknowledged "
        f"({len(acks.created)} creates, {len(acks.cancelled)} cancels, {len(acks.claimed)} claims),"
        f" {found} survived, {acks.failed} unanswered (in flight at a kill),"
        f" {acks.refused} refused with a 4xx (lost races)"
    )
