"""Webhooks under faults: no committed change loses its delivery, and several server processes
never send one delivery's attempts at once.

* A task is created while no process sends webhooks (``--webhook-concurrency 0``), the server is
  killed with SIGKILL, and a server started again on the same file delivers it.
* The server is killed with SIGKILL while its receiver holds the delivery's request open: after
  a restart the lapsed lease lets the new process send it again, with the same ``webhook-id``
  (receivers deduplicate on it), and the delivery ends delivered.
* Two ``serve`` processes on one file both dispatch; a slow receiver that fails every first
  attempt counts the requests of each ``webhook-id`` it holds at once: never two.
"""

from __future__ import annotations

import base64
import threading

import httpx
from reliability_support import add_key, assert_log_sound, wait_for
from standardwebhooks import Webhook

from tests.webhooks.receiver import Receiver

FILE = base64.b64encode(b"hello, webhooks under faults").decode()
#: Private addresses allowed (the receiver is on 127.0.0.1), retries a thousandth of
#: production's, a 1 s attempt timeout (so a dead process's lease lapses after 3 s).
FLAGS = (
    "--allow-private-webhooks",
    "--webhook-backoff-scale",
    "0.001",
    "--webhook-timeout",
    "1",
)


def subscribe(server, key: str, url: str, events: list[str]) -> dict:
    with server.client(key) as c:
        answer = c.post("/webhooks", json={"url": url, "events": events})
    assert answer.status_code == 201, answer.text
    return answer.json()


def create(api: str, key: str) -> str:
    answer = httpx.post(
        f"{api}/task/parse", json={"file": FILE}, headers={"Authorization": key}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["task_id"]


def without_links(value):
    """``value`` without its links (``task_url``, ``configuration.input_file_url``, ...)."""
    if isinstance(value, dict):
        return {k: without_links(v) for k, v in value.items() if not k.endswith("_url")}
    return value


def deliveries(server, key: str, webhook_id: str) -> list[dict]:
    with server.client(key) as c:
        answer = c.get(f"/webhooks/{webhook_id}/deliveries", params={"limit": 100})
    assert answer.status_code == 200, answer.text
    return answer.json()["deliveries"]


def test_a_change_committed_before_a_sigkill_is_delivered_after_restart(serve, tmp_path):
    db = tmp_path / "hooks.db"
    with Receiver() as receiver:
        quiet = serve(*FLAGS, "--webhook-concurrency", "0", db=db)
        alice = add_key(db, "alice")
        hook = subscribe(quiet, alice, receiver.url, ["task.created"])
        task_ids = [create(quiet.api, alice) for _ in range(3)]
        quiet.kill()
        assert receiver.requests() == []  # nobody sent them: they wait in the outbox
        again = serve(*FLAGS, db=db)
        got = wait_for(
            lambda: len(receiver.requests()) >= 3 and receiver.requests(),
            timeout=30,
            what="the three deliveries after the restart",
        )
        verifier = Webhook(hook["secret"])
        sent = [verifier.verify(r.body, r.headers)["data"]["task_id"] for r in got]
        assert sorted(sent) == sorted(task_ids)
        wait_for(
            lambda: all(d["status"] == "succeeded" for d in deliveries(again, alice, hook["id"])),
            timeout=30,
            what="the deliveries recorded as delivered",
        )
    assert_log_sound(db)


def test_a_delivery_in_flight_at_a_sigkill_is_sent_again_with_the_same_id(serve, tmp_path):
    db = tmp_path / "inflight.db"
    with Receiver() as receiver:
        first_seen = threading.Event()
        release = threading.Event()

        def answer(received):
            if not first_seen.is_set():
                first_seen.set()
                release.wait(10)  # holds the first request open until the server is dead
            return 200, b"ok"

        receiver.answer = answer
        server = serve(*FLAGS, db=db)
        alice = add_key(db, "alice")
        hook = subscribe(server, alice, receiver.url, ["task.created"])
        create(server.api, alice)
        assert first_seen.wait(20), "the first attempt never reached the receiver"
        server.kill()
        release.set()
        again = serve(*FLAGS, db=db)
        got = wait_for(
            lambda: len(receiver.requests()) >= 2 and receiver.requests(),
            timeout=30,
            what="the delivery sent again after the restart",
        )
        assert got[0].webhook_id == got[1].webhook_id
        verifier = Webhook(hook["secret"])
        # The same task as it was after the same event; only the links differ (signed afresh,
        # by a server on another port).
        assert without_links(verifier.verify(got[1].body, got[1].headers)) == without_links(
            verifier.verify(got[0].body, got[0].headers)
        )
        (delivery,) = wait_for(
            lambda: [d for d in deliveries(again, alice, hook["id"]) if d["status"] == "succeeded"],
            timeout=30,
            what="the delivery recorded as delivered",
        )
        # The attempt the dead process made was never recorded: the one that counts is the
        # restarted process's.
        assert delivery["id"] == got[0].webhook_id
        assert delivery["attempt_log"][-1]["status_code"] == 200


def test_two_processes_never_send_one_delivery_at_once(serve, tmp_path):
    db = tmp_path / "two.db"
    with Receiver() as receiver:
        failed_once: set[str] = set()
        lock = threading.Lock()

        def answer(received):
            with lock:
                first = received.webhook_id not in failed_once
                failed_once.add(received.webhook_id)
            return (500, b"try again") if first else (200, b"ok")

        receiver.answer = answer
        receiver.delay = 0.05
        first = serve(*FLAGS, db=db)
        second = serve(*FLAGS, db=db)
        alice = add_key(db, "alice")
        hook = subscribe(first, alice, receiver.url, ["task.created", "task.cancelled"])
        apis = [first.api, second.api]
        task_ids = [create(apis[i % 2], alice) for i in range(20)]
        for i, task_id in enumerate(task_ids[:10]):
            answer_ = httpx.get(
                f"{apis[(i + 1) % 2]}/task/{task_id}/cancel",
                headers={"Authorization": alice},
                timeout=30,
            )
            assert answer_.status_code == 200, answer_.text
        expected = 30  # 20 created, 10 cancelled
        wait_for(
            lambda: (
                len([d for d in deliveries(first, alice, hook["id"]) if d["status"] == "succeeded"])
                == expected
            ),
            timeout=60,
            what="every delivery delivered",
        )
        got = receiver.requests()
        ids = {r.webhook_id for r in got}
        assert len(ids) == expected
        assert receiver.most_at_once == 1
        # Each delivery failed once and then succeeded: two requests per id, no more.
        assert len(got) == 2 * expected
        # Each task's events arrived in order: created before cancelled.
        verifier = Webhook(hook["secret"])
        seen: dict[str, list[str]] = {}
        for r in got:
            if r.webhook_id in {x.webhook_id for x in got[: got.index(r)]}:
                continue
            body = verifier.verify(r.body, r.headers)
            seen.setdefault(body["data"]["task_id"], []).append(body["type"])
        for task_id in task_ids[:10]:
            assert seen[task_id] == ["task.created", "task.cancelled"]
    assert_log_sound(db)
