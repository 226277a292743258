"""Who may see and change which subscription, and whose tasks a subscription hears of: a user's
only its owner's; an admin's ``all_owners`` one every owner's. Another owner's subscription is
404 (as if it did not exist), a worker key 403."""

from __future__ import annotations

from tests.inprocess import add_key
from tests.support import wait_for
from tests.webhooks.hooks_support import (
    api,
    create_task,
    deliveries,
    finished,
    of_task,
    subscribe,
    wait_delivery,
)


def test_another_owners_subscription_is_not_found(hook_server, keys, receiver):
    with api(hook_server, keys["alice"]) as alice, api(hook_server, keys["bob"]) as bob:
        hook = subscribe(alice, receiver.url, events=["task.deleted"])
        path = f"/webhooks/{hook['id']}"
        assert bob.get(path).status_code == 404
        assert bob.get(path + "/deliveries").status_code == 404
        assert bob.post(path + "/rotate-secret").status_code == 404
        assert bob.post(path + "/deliveries/msg_x/retry").status_code == 404
        assert bob.delete(path).status_code == 404
        assert hook["id"] not in [h["id"] for h in bob.get("/webhooks").json()["webhooks"]]
        # ... as an unknown one is.
        assert bob.get("/webhooks/wh_unknown").status_code == 404
        assert bob.delete("/webhooks/wh_unknown").status_code == 404
        # Still alice's, untouched (bob's rotate did not rotate it).
        mine = alice.get(path)
        assert mine.status_code == 200, mine.text
        assert mine.json()["secret_rotated_at"] is None
        assert mine.json()["owner"] == "alice"
        assert hook["id"] in [h["id"] for h in alice.get("/webhooks").json()["webhooks"]]
        # The admin sees it, in the list and on its own.
        with api(hook_server, keys["admin"]) as admin:
            assert admin.get(path).status_code == 200
            assert hook["id"] in [h["id"] for h in admin.get("/webhooks").json()["webhooks"]]
        assert alice.delete(path).status_code == 204
        # Deleted: gone for everyone, and a second delete is 404.
        assert alice.get(path).status_code == 404
        assert alice.delete(path).status_code == 404
        assert alice.post(path + "/rotate-secret").status_code == 404
        assert hook["id"] not in [h["id"] for h in alice.get("/webhooks").json()["webhooks"]]


def test_a_worker_key_may_not_manage_webhooks(hook_server, keys, receiver):
    with api(hook_server, keys["worker"]) as worker:
        assert worker.get("/webhooks").status_code == 403
        assert worker.post("/webhooks", json={"url": receiver.url}).status_code == 403
        assert worker.get("/webhooks/default").status_code == 403
    with api(hook_server, "tlk_000000000000_nope") as nobody:
        assert nobody.get("/webhooks").status_code == 401


def test_a_users_all_owners_is_refused(hook_server, keys, receiver):
    with api(hook_server, keys["alice"]) as alice:
        answer = alice.post("/webhooks", json={"url": receiver.url, "all_owners": True})
        assert answer.status_code == 400, answer.text
        assert "admin" in answer.text
        assert alice.get("/webhooks").json()["webhooks"] == []


def test_subscriptions_hear_their_owners_tasks_and_an_admins_hears_all(hook_server, keys, receiver):
    carol = add_key(hook_server.db, "carol")
    dave = add_key(hook_server.db, "dave")
    with (
        api(hook_server, carol) as c,
        api(hook_server, dave) as d,
        api(hook_server, keys["admin"]) as admin,
    ):
        every = subscribe(admin, receiver.url + "/all", all_owners=True, events=["task.created"])
        assert every["owner"] is None
        # An admin's subscription without all_owners hears its own owner's tasks only.
        own = subscribe(admin, receiver.url + "/own", events=["task.created"])
        assert own["owner"] is not None
        carols = subscribe(c, receiver.url + "/carol", events=["task.created"])
        assert carols["owner"] == "carol"
        c_task, d_task = create_task(c), create_task(d)
        # The deliveries are written with the task's event: the lists are complete at once.
        assert [x["task_id"] for x in deliveries(c, carols["id"])] == [c_task]
        assert {x["task_id"] for x in deliveries(admin, every["id"])} == {c_task, d_task}
        assert deliveries(admin, own["id"]) == []
        for task_id in (c_task, d_task):
            got = wait_for(lambda t=task_id: of_task(receiver, t, "/all"), timeout=30, what="all")
            assert got[0].json()["data"]["task_id"] == task_id
        wait_delivery(c, carols["id"], c_task, finished)
        assert len(of_task(receiver, c_task, "/carol")) == 1
        assert of_task(receiver, d_task, "/carol") == []
        assert [r for r in receiver.requests() if r.path == "/own"] == []
        # Carol cannot see the admin's subscriptions, even the one that hears her tasks.
        assert c.get(f"/webhooks/{every['id']}").status_code == 404
        assert [h["id"] for h in c.get("/webhooks").json()["webhooks"]] == [carols["id"]]
        for hook in (every, own):
            assert admin.delete(f"/webhooks/{hook['id']}").status_code == 204
        # An admin may delete a user's subscription.
        assert admin.delete(f"/webhooks/{carols['id']}").status_code == 204
