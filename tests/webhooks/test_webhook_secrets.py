"""Secrets: rotating one signs with the new secret and the old one side by side for 24 hours;
and a task's own ``webhook_url`` (on create and on update) gets its deliveries signed with the
owner's default secret (GET /api/v1/webhooks/default)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.support import chunkr_output, wait_for
from tests.webhooks.hooks_support import (
    api,
    create_task,
    deliveries,
    finished,
    new_owner_key,
    of_task,
    subscribe,
    wait_delivery,
)


def test_a_rotated_secret_signs_beside_the_old_one(hook_server, receiver):
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        old = hook["secret"]
        assert hook["previous_secret_expires_at"] is None
        before = create_task(user)
        first = wait_for(lambda: of_task(receiver, before), timeout=30, what="a delivery")[0]
        assert len(first.headers["webhook-signature"].split(" ")) == 1

        rotated = user.post(f"/webhooks/{hook['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        body = rotated.json()
        new = body["secret"]
        assert new.startswith("whsec_") and new != old
        expires = datetime.fromisoformat(body["previous_secret_expires_at"])
        rotated_at = datetime.fromisoformat(body["secret_rotated_at"])
        assert expires - rotated_at == timedelta(hours=24)
        assert abs(expires - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=5)
        # The secret is shown in the answer that rotated it, never again.
        assert "secret" not in user.get(f"/webhooks/{hook['id']}").json()

        after = create_task(user)
        got = wait_for(lambda: of_task(receiver, after), timeout=30, what="a delivery")[0]
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        assert Webhook(new).verify(got.body, got.headers)["data"]["task_id"] == after
        assert Webhook(old).verify(got.body, got.headers)["data"]["task_id"] == after
        # ... while a delivery from before the rotation verifies with the old secret only.
        Webhook(old).verify(first.body, first.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(new).verify(first.body, first.headers)

        # A second rotation: the secret it replaces is the first rotation's, and the first
        # secret no longer signs.
        third = user.post(f"/webhooks/{hook['id']}/rotate-secret").json()["secret"]
        last = create_task(user)
        got = wait_for(lambda: of_task(receiver, last), timeout=30, what="a delivery")[0]
        Webhook(third).verify(got.body, got.headers)
        Webhook(new).verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(got.body, got.headers)
        user.delete(f"/webhooks/{hook['id']}")
        # Cancelled, so no task is left waiting for a worker in this module.
        for task_id in (before, after, last):
            assert user.get(f"/task/{task_id}/cancel").status_code == 200


def test_a_tasks_own_webhook_url_is_signed_with_the_default_secret(hook_server, keys, receiver):
    with api(hook_server, new_owner_key(hook_server)) as user:
        default = user.get("/webhooks/default")
        assert default.status_code == 200, default.text
        secret = default.json()["secret"]
        assert secret.startswith("whsec_")
        assert default.json()["url"] is None
        # The same secret on every read (it is made once).
        assert user.get("/webhooks/default").json()["secret"] == secret

        task_id = create_task(user, webhook_url=receiver.url + "/mine")
        got = wait_for(lambda: of_task(receiver, task_id, "/mine"), timeout=30, what="delivery")
        payload = Webhook(secret).verify(got[0].body, got[0].headers)
        assert payload["type"] == "task.created"
        assert payload["data"]["task_id"] == task_id
        listed = wait_delivery(user, "default", task_id, finished)
        assert listed["status"] == "succeeded"
        assert listed["url"] == receiver.url + "/mine"
        assert listed["id"] == got[0].webhook_id

        # Another owner's default secret is another secret.
        with api(hook_server, new_owner_key(hook_server)) as other:
            theirs = other.get("/webhooks/default").json()["secret"]
            assert theirs != secret
            with pytest.raises(WebhookVerificationError):
                Webhook(theirs).verify(got[0].body, got[0].headers)
            assert [d for d in deliveries(other, "default") if d["task_id"] == task_id] == []
            # The default subscription is not one to delete.
            assert other.delete("/webhooks/default").status_code == 400

        # Claimed and completed (the worker claims the oldest task waiting: this module's
        # tasks are all this test's, and it made just the one).
        with api(hook_server, keys["worker"]) as worker:
            claimed = worker.post("/worker/claim", json={"worker_id": "w-secrets"})
            assert claimed.status_code == 200, claimed.text
            assert claimed.json()["task_id"] == task_id
            done = worker.post(
                f"/task/{task_id}/complete",
                json={"worker_id": "w-secrets", "output": chunkr_output()},
            )
            assert done.status_code == 200, done.text
        types = ["task.created", "task.started", "task.succeeded"]
        wait_for(lambda: len(of_task(receiver, task_id, "/mine")) >= 3, timeout=30, what="three")
        got = of_task(receiver, task_id, "/mine")
        assert [Webhook(secret).verify(r.body, r.headers)["type"] for r in got] == types

        # PATCH moves the task's webhooks to a new address: the update goes there, not to the
        # old one.
        patched = user.patch(
            f"/task/{task_id}/parse",
            json={"expires_in": 3600, "webhook_url": receiver.url + "/moved"},
        )
        assert patched.status_code == 200, patched.text
        moved = wait_for(lambda: of_task(receiver, task_id, "/moved"), timeout=30, what="moved")
        payload = Webhook(secret).verify(moved[0].body, moved[0].headers)
        assert payload["type"] == "task.updated"
        assert len(of_task(receiver, task_id, "/mine")) == 3
        # Cancelling the update restores the address it had: the cancel goes to /mine.
        cancelled = user.get(f"/task/{task_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        back = wait_for(
            lambda: len(of_task(receiver, task_id, "/mine")) == 4, timeout=30, what="cancel"
        )
        assert back
        last = of_task(receiver, task_id, "/mine")[-1]
        assert Webhook(secret).verify(last.body, last.headers)["type"] == "task.cancelled"
        listed = [d for d in deliveries(user, "default") if d["task_id"] == task_id]
        assert [d["event_type"] for d in listed] == [*types, "task.updated", "task.cancelled"]
        assert [d["url"].rsplit("/", 1)[1] for d in listed] == ["mine"] * 3 + ["moved", "mine"]


def test_rotating_the_default_secret(hook_server, receiver):
    with api(hook_server, new_owner_key(hook_server)) as user:
        old = user.get("/webhooks/default").json()["secret"]
        rotated = user.post("/webhooks/default/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        assert user.get("/webhooks/default").json()["secret"] == new
        task_id = create_task(user, webhook_url=receiver.url + "/d")
        got = wait_for(lambda: of_task(receiver, task_id), timeout=30, what="a delivery")[0]
        Webhook(new).verify(got.body, got.headers)
        Webhook(old).verify(got.body, got.headers)
        # Cancelled, so no task is left waiting for a worker in this module.
        assert user.get(f"/task/{task_id}/cancel").status_code == 200


def test_a_deleted_tasks_webhook_is_sent_and_verifies(hook_server, keys, receiver):
    """task.deleted: the body is the task as it was right after its deletion (its blobs are
    purged by then)."""
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.succeeded", "task.deleted"])
        task_id = create_task(user)
        with api(hook_server, keys["worker"]) as worker:
            claimed = worker.post("/worker/claim", json={"worker_id": "w-del"})
            assert claimed.status_code == 200, claimed.text
            assert claimed.json()["task_id"] == task_id
            done = worker.post(
                f"/task/{task_id}/complete", json={"worker_id": "w-del", "output": chunkr_output()}
            )
            assert done.status_code == 200, done.text
        assert user.delete(f"/task/{task_id}").status_code == 200
        d = wait_delivery(user, hook["id"], task_id, finished, event="task.deleted")
        assert d["status"] == "succeeded", d
        got = of_task(receiver, task_id)
        types = [Webhook(hook["secret"]).verify(r.body, r.headers)["type"] for r in got]
        assert types == ["task.succeeded", "task.deleted"]
        user.delete(f"/webhooks/{hook['id']}")


def test_a_retried_create_answers_the_same_subscription_without_its_secret(hook_server, receiver):
    from tests.pg import execute

    with api(hook_server, new_owner_key(hook_server)) as user:
        headers = {"Idempotency-Key": "make-hook-1"}
        first = user.post("/webhooks", json={"url": receiver.url}, headers=headers)
        again = user.post("/webhooks", json={"url": receiver.url}, headers=headers)
        assert first.status_code == again.status_code == 201, again.text
        assert again.json()["id"] == first.json()["id"]
        assert first.json()["secret"].startswith("whsec_")
        assert "secret" not in again.json()  # shown once
        assert [h["id"] for h in user.get("/webhooks").json()["webhooks"]] == [first.json()["id"]]
        # The key's stored answer does not hold the secret either.
        stored = execute(hook_server.db, "SELECT outcome FROM idempotency_outcomes")
        blob = b"".join(bytes(row[0]) for row in stored)
        assert first.json()["id"].encode() in blob
        assert first.json()["secret"].encode() not in blob
        user.delete(f"/webhooks/{first.json()['id']}")
