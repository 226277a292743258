"""Subscriptions are history: their changes are events in the log (the admin's feed shows them
with their ``webhook_id``; a user's feed does not), ``taskledger verify`` checks the
subscription rows against their streams, ``taskledger rebuild`` writes them again from the log,
an export holds no secret, and deleting a subscription stops its deliveries not yet sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import closing
from datetime import datetime

from tests.server import ROOT
from tests.support import wait_for
from tests.webhooks.hooks_support import (
    api,
    create_task,
    new_owner_key,
    of_task,
    subscribe,
    wait_delivery,
    webhook_events,
)


def taskledger(*args: str, db) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )


def store_of(db):
    from api.composition import Store

    return closing(Store(db))


def test_subscription_changes_are_events_in_the_admins_feed(hook_server, keys, receiver):
    with api(hook_server, keys["alice"]) as alice, api(hook_server, keys["admin"]) as admin:
        hook = subscribe(alice, receiver.url, events=["task.succeeded"], description="log")
        rotated = alice.post(f"/webhooks/{hook['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        assert alice.delete(f"/webhooks/{hook['id']}").status_code == 204
        history = webhook_events(admin, hook["id"])
        assert [e["type"] for e in history] == [
            "webhook_created",
            "webhook_secret_rotated",
            "webhook_deleted",
        ]
        assert [e["version"] for e in history] == [1, 2, 3]
        created = history[0]
        assert created["task_id"] is None
        assert created["data"]["url"] == receiver.url
        assert created["data"]["owner"] == "alice"
        assert created["data"]["event_types"] == ["task.succeeded"]
        assert created["data"]["description"] == "log"
        alice_key_id = keys["alice"].split("_")[1]
        assert {e["actor"]["key_id"] for e in history} == {alice_key_id}
        until = datetime.fromisoformat(history[1]["data"]["previous_valid_until"])
        assert until == datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
        # No secret in any event.
        text = json.dumps(history)
        assert hook["secret"] not in text and rotated.json()["secret"] not in text
        assert "whsec_" not in text
        # A user's own feed holds only its tasks' events.
        mine = alice.get("/events", params={"limit": 1000})
        assert mine.status_code == 200, mine.text
        assert [e for e in mine.json()["events"] if e.get("webhook_id")] == []


def test_verify_and_rebuild_cover_the_subscriptions(hook_server, keys, receiver, tmp_path):
    with api(hook_server, keys["bob"]) as bob:
        kept = subscribe(bob, receiver.url + "/kept", events=["task.created"])
        rotated = subscribe(bob, receiver.url + "/rotated", events=["task.created"])
        bob.post(f"/webhooks/{rotated['id']}/rotate-secret")
        gone = subscribe(bob, receiver.url + "/gone")
        bob.delete(f"/webhooks/{gone['id']}")
        task_id = create_task(bob)
        wait_delivery(bob, kept["id"], task_id, lambda d: d["status"] == "succeeded")
        before = {h["id"]: h for h in bob.get("/webhooks").json()["webhooks"]}
        assert set(before) == {kept["id"], rotated["id"]}

        result = taskledger("verify", db=hook_server.db)
        assert result.returncode == 0, result.stdout + result.stderr

        # The subscription rows lost: verify says so, naming each, and rebuild writes them again.
        with store_of(hook_server.db) as store:
            with store.log.transaction() as tx:
                store.webhooks.clear_webhooks(tx)
        assert bob.get(f"/webhooks/{kept['id']}").status_code == 404
        result = taskledger("verify", db=hook_server.db)
        assert result.returncode == 1, result.stdout + result.stderr
        for hook in (kept, rotated, gone):
            assert f"webhook {hook['id']}: no subscription row" in result.stdout, result.stdout

        result = taskledger("rebuild", db=hook_server.db)
        assert result.returncode == 0, result.stdout + result.stderr
        result = taskledger("verify", db=hook_server.db)
        assert result.returncode == 0, result.stdout + result.stderr
        after = {h["id"]: h for h in bob.get("/webhooks").json()["webhooks"]}
        assert after == before
        assert bob.get(f"/webhooks/{gone['id']}").status_code == 404
        # ... and they hear tasks again.
        later = create_task(bob)
        wait_for(lambda: of_task(receiver, later, "/kept"), timeout=30, what="a delivery")

        # A row that says something else than its stream is a difference too.
        with store_of(hook_server.db) as store:
            import msgspec

            state = store.webhooks.load_webhook(kept["id"])
            assert state is not None
            with store.log.transaction() as tx:
                store.webhooks.save_webhook(
                    tx, msgspec.structs.replace(state, url="http://127.0.0.1:9/elsewhere")
                )
        result = taskledger("verify", db=hook_server.db)
        assert result.returncode == 1
        assert kept["id"] in result.stdout
        assert taskledger("rebuild", db=hook_server.db).returncode == 0
        assert bob.get(f"/webhooks/{kept['id']}").json()["url"] == receiver.url + "/kept"

        # An export's events hold no signing secret: the secrets travel only as webhook_secret
        # records (so that a ledger moved elsewhere keeps signing with them).
        default = bob.get("/webhooks/default").json()["secret"]  # made now, if not before
        exported = taskledger("export", db=hook_server.db)
        assert exported.returncode == 0, exported.stderr
        assert kept["id"] in exported.stdout
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        events = json.dumps([line for line in lines if line["kind"] == "event"])
        secrets_kept = json.dumps([line for line in lines if line["kind"] == "webhook_secret"])
        for secret in (kept["secret"], rotated["secret"], default):
            assert secret not in events
            assert secret in secrets_kept
        for hook in (kept, rotated):
            bob.delete(f"/webhooks/{hook['id']}")
        bob.get(f"/task/{task_id}/cancel")
        bob.get(f"/task/{later}/cancel")


def test_deleting_a_subscription_stops_its_pending_deliveries(hook_server, receiver):
    receiver.answer = lambda r: (503, b"busy")
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        pending = wait_delivery(
            user, hook["id"], task_id, lambda d: d["attempts"] >= 1, what="a first attempt"
        )
        assert pending["status"] == "pending"
        assert user.delete(f"/webhooks/{hook['id']}").status_code == 204
        assert user.get(f"/webhooks/{hook['id']}/deliveries").status_code == 404

        def stopped():
            with store_of(hook_server.db) as store:
                d = store.webhooks.get_delivery(pending["id"])
                assert d is not None
                return d if d.status != "pending" else None

        d = wait_for(stopped, timeout=30, what="the delivery to stop")
        assert d.status == "failed"
        assert d.last_error == "not sent: the subscription is deleted"
        with store_of(hook_server.db) as store:
            attempts = store.webhooks.attempts(d.delivery_id)
        assert attempts[-1].status_code is None
        assert attempts[-1].error == "not sent: the subscription is deleted"
        sent = [a for a in attempts if a.status_code is not None]
        assert all(a.status_code == 503 for a in sent)
        # Every attempt but the last reached the receiver; the last never did.
        assert len(of_task(receiver, task_id)) == len(sent) == len(attempts) - 1
