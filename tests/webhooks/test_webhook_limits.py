"""The dispatcher's limits, on a server of this module's own: ``--webhook-max-attempts 3`` (a
delivery that keeps failing is marked failed after its 3rd attempt) and ``--webhook-disable-after
2`` (a subscription whose last 2 deliveries failed is disabled: a ``webhook_disabled`` event in
the log, and nothing more is delivered to it)."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.pg import drop_database, new_database
from tests.server import Server, free_port
from tests.support import wait_for
from tests.webhooks.conftest import FLAGS
from tests.webhooks.hooks_support import (
    answers,
    api,
    create_task,
    deliveries,
    finished,
    new_owner_key,
    of_task,
    subscribe,
    wait_delivery,
    webhook_events,
)


@pytest.fixture(scope="module")
def limited(db_backend, tmp_path_factory):
    db = new_database(db_backend, tmp_path_factory)
    flags = (*FLAGS, "--webhook-max-attempts", "3", "--webhook-disable-after", "2")
    srv = Server(db, *flags, workdir=tmp_path_factory.mktemp("serve")).start()
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(db)


def test_a_delivery_gives_up_after_max_attempts(limited, receiver):
    receiver.answer = answers(then=503)
    with api(limited, new_owner_key(limited)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        d = wait_delivery(user, hook["id"], task_id, finished, what="the delivery to give up")
        assert d["status"] == "failed"
        assert d["attempts"] == 3
        assert d["last_status"] == 503
        assert d["next_attempt_at"] is None
        assert [a["status_code"] for a in d["attempt_log"]] == [503, 503, 503]
        got = of_task(receiver, task_id)
        assert len(got) == 3 and {r.webhook_id for r in got} == {d["id"]}
        for r in got:
            Webhook(hook["secret"]).verify(r.body, r.headers)
        # One failed delivery is not a run of 2: still active.
        assert user.get(f"/webhooks/{hook['id']}").json()["status"] == "active"
        user.delete(f"/webhooks/{hook['id']}")


def test_a_network_error_gives_up_after_max_attempts_too(limited):
    nothing = f"http://127.0.0.1:{free_port()}/"
    with api(limited, new_owner_key(limited)) as user:
        hook = subscribe(user, nothing, events=["task.created"])
        task_id = create_task(user)
        d = wait_delivery(user, hook["id"], task_id, finished, what="the delivery to give up")
        assert d["status"] == "failed" and d["attempts"] == 3
        assert all(a["status_code"] is None and a["error"] for a in d["attempt_log"])
        user.delete(f"/webhooks/{hook['id']}")


def test_a_run_of_failed_deliveries_disables_the_subscription(limited, receiver):
    admin_key = limited.admin_key
    receiver.answer = lambda r: (404, b"gone") if r.path == "/failing" else (200, b"ok")
    with api(limited, new_owner_key(limited)) as user, api(limited, admin_key) as admin:
        failing = subscribe(user, receiver.url + "/failing", events=["task.created"])
        control = subscribe(user, receiver.url + "/control", events=["task.created"])
        first, second = create_task(user), create_task(user)
        found = wait_for(
            lambda: (
                (h := user.get(f"/webhooks/{failing['id']}").json())["status"] == "disabled" and h
            ),
            timeout=30,
            what="the subscription to be disabled",
        )
        assert found["disabled_reason"] == "2 deliveries in a row failed"
        for task_id in (first, second):
            d = wait_delivery(user, failing["id"], task_id, finished)
            assert d["status"] == "failed" and d["attempts"] == 1 and d["last_status"] == 404
        # The log says so: a webhook_disabled event, by the system, naming the subscription.
        history = webhook_events(admin, failing["id"])
        assert [e["type"] for e in history] == ["webhook_created", "webhook_disabled"]
        assert history[1]["task_id"] is None
        assert history[1]["actor"] == {"key_id": None, "role": "system"}
        assert history[1]["data"]["reason"] == "2 deliveries in a row failed"
        # The feed's type filter knows the subscriptions' event types too.
        typed = admin.get("/events", params={"type": "webhook_disabled", "limit": 1000})
        assert typed.status_code == 200, typed.text
        assert failing["id"] in {e.get("webhook_id") for e in typed.json()["events"]}
        assert {e["type"] for e in typed.json()["events"]} == {"webhook_disabled"}
        # Still listed, as disabled; the control is untouched.
        listed = {h["id"]: h for h in user.get("/webhooks").json()["webhooks"]}
        assert listed[failing["id"]]["status"] == "disabled"
        assert listed[control["id"]]["status"] == "active"
        # Nothing more goes to it: a later task reaches the control, not the disabled one, and
        # no delivery to it is even written.
        before = len(of_task(receiver, first, "/failing")) + len(
            of_task(receiver, second, "/failing")
        )
        assert before == 2
        later = create_task(user)
        wait_for(lambda: of_task(receiver, later, "/control"), timeout=30, what="the control")
        assert of_task(receiver, later, "/failing") == []
        assert [d for d in deliveries(user, failing["id"]) if d["task_id"] == later] == []
        assert len([r for r in receiver.requests() if r.path == "/failing"]) == 2
        # Disabling is not deleting: it can still be deleted.
        for h in (failing, control):
            assert user.delete(f"/webhooks/{h['id']}").status_code == 204


def test_a_success_ends_the_run_of_failures(limited, receiver):
    """Failed, succeeded, failed: never 2 in a row, so never disabled."""
    outcomes = iter([404, 200, 404])
    receiver.answer = lambda r: (next(outcomes, 200), b"")
    with api(limited, new_owner_key(limited)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        tasks = []
        for _ in range(3):
            # One at a time, so the receiver's answers meet the deliveries in this order.
            tasks.append(create_task(user))
            wait_delivery(user, hook["id"], tasks[-1], finished)
        statuses = [wait_delivery(user, hook["id"], t, finished)["status"] for t in tasks]
        assert statuses == ["failed", "succeeded", "failed"]
        assert user.get(f"/webhooks/{hook['id']}").json()["status"] == "active"
        user.delete(f"/webhooks/{hook['id']}")
