"""Retries against a real server (``hook_server``: retry delays a thousandth of production's):
5xx, 429 and network errors are tried again with the same ``webhook-id``; any other non-2xx
fails the delivery at once, its status and the first KB of the answer kept; and the retry
endpoint sends a finished delivery once more.

Each test subscribes for an owner of its own, so no other test's tasks reach its receiver."""

from __future__ import annotations

from datetime import datetime

from standardwebhooks import Webhook

from tests.server import free_port
from tests.support import wait_for
from tests.webhooks.hooks_support import (
    answers,
    api,
    create_task,
    finished,
    new_owner_key,
    of_task,
    subscribe,
    wait_delivery,
)


def test_500_three_times_then_200_is_one_delivery_of_four_attempts(hook_server, receiver):
    receiver.answer = answers(500, 500, 500)
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        d = wait_delivery(user, hook["id"], task_id, finished, what="the 4th attempt")
        got = of_task(receiver, task_id)
        assert len(got) == 4
        assert len({r.webhook_id for r in got}) == 1
        assert got[0].webhook_id == d["id"]
        verifier = Webhook(hook["secret"])
        payloads = [verifier.verify(r.body, r.headers) for r in got]
        assert all(
            p["type"] == "task.created" and p["data"]["task_id"] == task_id for p in payloads
        )
        assert d["status"] == "succeeded"
        assert d["attempts"] == 4
        assert d["last_status"] == 200
        assert d["next_attempt_at"] is None
        assert d["finished_at"] is not None
        log = d["attempt_log"]
        assert [a["attempt"] for a in log] == [1, 2, 3, 4]
        assert [a["status_code"] for a in log] == [500, 500, 500, 200]
        assert all(a["error"] == "the receiver answered 500" for a in log[:3])
        assert log[3]["error"] is None
        assert [a["response"] for a in log] == [
            "answer 1: 500",
            "answer 2: 500",
            "answer 3: 500",
            "answer 4: 200",
        ]
        times = [datetime.fromisoformat(a["at"]) for a in log]
        assert times == sorted(times) and len(set(times)) == 4
        assert user.delete(f"/webhooks/{hook['id']}").status_code == 204


def test_429_is_tried_again(hook_server, receiver):
    receiver.answer = answers(429)
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        d = wait_delivery(user, hook["id"], task_id, finished)
        assert d["status"] == "succeeded"
        assert [a["status_code"] for a in d["attempt_log"]] == [429, 200]
        got = of_task(receiver, task_id)
        assert len(got) == 2 and got[0].webhook_id == got[1].webhook_id == d["id"]
        user.delete(f"/webhooks/{hook['id']}")


def test_a_network_error_is_tried_again(hook_server):
    nothing = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, nothing, events=["task.created"])
        task_id = create_task(user)
        d = wait_delivery(
            user, hook["id"], task_id, lambda d: d["attempts"] >= 2, what="a second attempt"
        )
        assert d["status"] == "pending"
        assert d["next_attempt_at"] is not None
        for a in d["attempt_log"][:2]:
            assert a["status_code"] is None
            assert a["error"], a
            assert a["response"] is None
        assert d["last_status"] is None and d["last_error"]
        assert user.delete(f"/webhooks/{hook['id']}").status_code == 204


def test_404_and_400_are_not_tried_again_and_their_answer_is_kept(hook_server, receiver):
    long_answer = b"x" * 3000
    receiver.answer = lambda r: (
        (404, b"no such hook " + long_answer)
        if r.path == "/404"
        else (
            400,
            "bad \N{SNOWMAN}".encode(),
        )
    )
    with api(hook_server, new_owner_key(hook_server)) as user:
        h404 = subscribe(user, receiver.url + "/404", events=["task.created"])
        h400 = subscribe(user, receiver.url + "/400", events=["task.created"])
        task_id = create_task(user)
        for hook, status in ((h404, 404), (h400, 400)):
            d = wait_delivery(user, hook["id"], task_id, finished)
            assert d["status"] == "failed"
            assert d["attempts"] == 1
            assert d["last_status"] == status
            assert d["last_error"] == f"the receiver answered {status}"
            assert d["next_attempt_at"] is None
            assert len(d["attempt_log"]) == 1
        kept_404 = wait_delivery(user, h404["id"], task_id, finished)["attempt_log"][0]["response"]
        assert kept_404 == ("no such hook " + "x" * 3000)[:1024]
        kept_400 = wait_delivery(user, h400["id"], task_id, finished)["attempt_log"][0]["response"]
        assert kept_400 == "bad \N{SNOWMAN}"
        # Failed for good: one request each, however long one waits. A later delivery to the
        # same receiver (a control) arriving proves the dispatcher moved on without a retry.
        ok = subscribe(user, receiver.url + "/ok", events=["task.created"])
        receiver.answer = lambda r: (200, b"ok")
        later = create_task(user)
        wait_for(lambda: of_task(receiver, later, "/ok"), timeout=30, what="the control")
        assert len(of_task(receiver, task_id, "/404")) == 1
        assert len(of_task(receiver, task_id, "/400")) == 1
        for hook in (h404, h400, ok):
            user.delete(f"/webhooks/{hook['id']}")


def test_retry_sends_a_failed_delivery_again_with_the_same_id(hook_server, receiver):
    receiver.answer = answers(404)
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        failed = wait_delivery(user, hook["id"], task_id, finished)
        assert failed["status"] == "failed" and failed["attempts"] == 1
        answer = user.post(f"/webhooks/{hook['id']}/deliveries/{failed['id']}/retry")
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "pending"
        assert answer.json()["id"] == failed["id"]
        d = wait_delivery(user, hook["id"], task_id, finished, what="the retried attempt")
        assert d["status"] == "succeeded"
        assert d["attempts"] == 2
        assert [a["status_code"] for a in d["attempt_log"]] == [404, 200]
        got = of_task(receiver, task_id)
        assert [r.webhook_id for r in got] == [failed["id"], failed["id"]]
        for r in got:
            Webhook(hook["secret"]).verify(r.body, r.headers)
        # An unknown delivery, or another subscription's, is 404.
        missing = user.post(f"/webhooks/{hook['id']}/deliveries/msg_nope/retry")
        assert missing.status_code == 404, missing.text
        other = subscribe(user, receiver.url + "/other", events=["task.created"])
        crossed = user.post(f"/webhooks/{other['id']}/deliveries/{failed['id']}/retry")
        assert crossed.status_code == 404, crossed.text
        for h in (hook, other):
            user.delete(f"/webhooks/{h['id']}")


def test_a_retry_while_an_attempt_is_in_flight_never_sends_it_twice_at_once(hook_server, receiver):
    """Retry asked for while the dispatcher is still waiting for the receiver's answer: the
    delivery stays the in-flight attempt's (its lease is not taken from it), so the receiver
    never has two requests of one webhook-id at once, and every request it got is an attempt
    in the delivery's log."""
    receiver.delay = 1.0
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        first = wait_for(lambda: of_task(receiver, task_id), timeout=30, what="a request")[0]
        assert receiver.in_progress[first.webhook_id] == 1
        answer = user.post(f"/webhooks/{hook['id']}/deliveries/{first.webhook_id}/retry")
        assert answer.status_code == 202, answer.text
        d = wait_delivery(user, hook["id"], task_id, finished, what="the delivery to finish")
        receiver.delay = 0
        assert d["status"] == "succeeded"
        assert receiver.most_at_once == 1
        assert len(of_task(receiver, task_id)) == d["attempts"] == len(d["attempt_log"])
        user.delete(f"/webhooks/{hook['id']}")


def test_a_retry_asked_for_during_a_failing_attempt_is_not_lost(hook_server, receiver):
    """The attempt under way when the retry is asked for fails for good (a 404 is not tried
    again): the retry still stands, so the delivery is sent once more, and delivered."""
    receiver.delay = 1.0
    receiver.answer = answers(404)
    with api(hook_server, new_owner_key(hook_server)) as user:
        hook = subscribe(user, receiver.url, events=["task.created"])
        task_id = create_task(user)
        first = wait_for(lambda: of_task(receiver, task_id), timeout=30, what="a request")[0]
        answer = user.post(f"/webhooks/{hook['id']}/deliveries/{first.webhook_id}/retry")
        assert answer.status_code == 202, answer.text
        receiver.delay = 0
        d = wait_delivery(user, hook["id"], task_id, finished, what="the delivery to finish")
        assert d["status"] == "succeeded"
        assert [a["status_code"] for a in d["attempt_log"]] == [404, 200]
        assert [r.webhook_id for r in of_task(receiver, task_id)] == [first.webhook_id] * 2
        user.delete(f"/webhooks/{hook['id']}")
