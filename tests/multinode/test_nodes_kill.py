"""A node killed under write load loses no acknowledged write, and the others carry on.

Client threads create, cancel and claim through all three nodes at random; one node is killed
with SIGKILL in the middle of that load (whatever it held, its transaction and its write turn's
advisory lock included, goes with its connections) and started again at once on the same port;
the other two keep taking writes meanwhile, and the load goes on until the killed node serves
again. Three rounds, a different node each time. Every
request that got a 2xx is in the log and the projections, no task is both cancelled and
claimed, positions stay gapless and ``taskledger verify --db URL`` exits 0.
"""

from __future__ import annotations

import random
import threading
import time

from multinode_support import Acks, create, load, wait_for

from tests.pg import needs_postgres

pytestmark = needs_postgres

ROUNDS = 3
THREADS = 6
#: Acknowledged writes each round waits for before the kill, and after it (on the other two).
BEFORE_KILL = 150
AFTER_KILL = 60


def missing_writes(cluster, acks: Acks) -> tuple[int, list[str]]:
    """How many acknowledged writes the ledger holds, and each one it does not."""
    streams = cluster.streams()
    statuses = cluster.statuses()
    found, missing = 0, []
    for task_id in acks.created:
        events = streams.get(task_id, [])
        if events and type(events[0].event).__name__ == "TaskCreated" and task_id in statuses:
            found += 1
        else:
            missing.append(f"created {task_id}")
    for task_id in acks.cancelled:
        types = [type(r.event).__name__ for r in streams.get(task_id, [])]
        if "Cancelled" in types and statuses.get(task_id) == "Cancelled":
            found += 1
        else:
            missing.append(f"cancelled {task_id}: {types}")
    for task_id, worker_id in acks.claimed.items():
        claims = [r.event for r in streams.get(task_id, []) if type(r.event).__name__ == "Claimed"]
        if any(c.worker_id == worker_id for c in claims):
            found += 1
        else:
            missing.append(f"claimed {task_id} by {worker_id}: {claims}")
    return found, missing


def test_sigkill_of_a_node_under_write_load_loses_no_acknowledged_write(cluster):
    acks = Acks()
    rng = random.Random(3)
    rounds = []
    for round_ in range(ROUNDS):
        victim = cluster.nodes[round_ % len(cluster.nodes)]
        stop = threading.Event()
        before = acks.total
        threads = load(cluster, acks, stop, threads=THREADS, seed=round_)
        try:
            wait_for(
                lambda before=before: acks.total >= before + BEFORE_KILL,
                timeout=120,
                what=f"{BEFORE_KILL} acknowledged writes in round {round_}",
                interval=0.01,
            )
            time.sleep(rng.uniform(0, 0.2))
            victim.kill()  # SIGKILL, with client threads still sending to it
            at_kill = acks.total
            victim.start()  # again at once, on the same port, with no repair step
            # The other nodes go on meanwhile: whatever the dead one held (its transaction, its
            # write turn's advisory lock) was let go with its connections.
            wait_for(
                lambda at_kill=at_kill: acks.total >= at_kill + AFTER_KILL,
                timeout=60,
                what=f"{AFTER_KILL} writes on the surviving nodes after the kill",
                interval=0.01,
            )
            victim.ready()
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not any(t.is_alive() for t in threads)
        assert not acks.errors, acks.errors[:5]

        found, missing = missing_writes(cluster, acks)
        assert not missing, missing[:10]
        assert found == acks.total
        rounds.append(
            f"round {round_}: node {victim.n} killed after {at_kill - before} writes "
            f"acknowledged in the round, {acks.total - at_kill} more until it served again; "
            f"{acks.total} acknowledged so far, all {found} present; {acks.failed} requests "
            f"unanswered (in flight at the kill) and {acks.down} refused a connection so far"
        )

    # One outcome per decision, a sound log, a clean verify.
    for task_id, events in cluster.streams().items():
        types = [type(r.event).__name__ for r in events]
        assert not ("Cancelled" in types and "Claimed" in types), (task_id, types)
    cluster.assert_log_sound()

    # And every node serves again: a create through each, read through another, cancelled.
    for i, node in enumerate(cluster.nodes):
        with node.client(cluster.keys["alice"]) as alice:
            task_id = create(alice, f"after{i}.txt")
        with cluster.nodes[(i + 1) % 3].client(cluster.keys["alice"]) as alice:
            assert alice.get(f"/task/{task_id}").json()["status"] == "Starting"
            assert alice.get(f"/task/{task_id}/cancel").status_code == 200

    print(
        f"\nkill test: {ROUNDS} SIGKILLs, {acks.sent} writes sent, {acks.total} acknowledged "
        f"({len(acks.created)} creates, {len(acks.cancelled)} cancels, {len(acks.claimed)} "
        f"claims; per node {dict(sorted(acks.by_node.items()))}), {acks.failed} unanswered, "
        f"{acks.down} not connected (node down), {acks.refused} refused (lost races, empty "
        "queue)\n" + "\n".join(rounds)
    )
