"""Deliveries end to end: a real server posts to a receiver on 127.0.0.1, and the receiver
verifies each one with the ``standardwebhooks`` package, as a receiver in production would."""

from __future__ import annotations

import base64

import httpx
import pytest
from standardwebhooks import Webhook

from tests.support import chunkr_output, wait_for

FILE = base64.b64encode(b"hello webhooks").decode()


def api(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.api, headers={"Authorization": key}, timeout=30)


def subscribe(client: httpx.Client, url: str, **fields) -> dict:
    answer = client.post("/webhooks", json={"url": url, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def run_task(server, keys, worker_id: str = "w-hooks") -> str:
    with api(server, keys["alice"]) as alice, api(server, keys["worker"]) as worker:
        created = alice.post("/task/parse", json={"file": FILE, "file_name": "a.txt"})
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        claimed = worker.post("/worker/claim", json={"worker_id": worker_id})
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["task_id"] == task_id
        done = worker.post(
            f"/task/{task_id}/complete",
            json={"worker_id": worker_id, "output": chunkr_output()},
        )
        assert done.status_code == 200, done.text
    return task_id


def test_created_claimed_completed_arrive_in_order_and_verify(hook_server, keys, receiver):
    with api(hook_server, keys["alice"]) as alice:
        hook = subscribe(alice, f"{receiver.url}/hook", description="all of alice's")
        assert hook["secret"].startswith("whsec_")
        assert hook["events"][0] == "task.created"
        task_id = run_task(hook_server, keys)
        got = wait_for(
            lambda: (
                [r for r in receiver.requests() if r.json()["data"]["task_id"] == task_id][:3]
                if len([r for r in receiver.requests() if r.json()["data"]["task_id"] == task_id])
                >= 3
                else None
            ),
            timeout=20,
            what="three deliveries",
        )
        verifier = Webhook(hook["secret"])
        payloads = [verifier.verify(r.body, r.headers) for r in got]
        assert [p["type"] for p in payloads] == ["task.created", "task.started", "task.succeeded"]
        assert [p["data"]["status"] for p in payloads] == ["Starting", "Processing", "Succeeded"]
        assert all(p["data"]["task_id"] == task_id for p in payloads)
        # As GET /api/v1/task/{id}?include_chunks=false answers it: the output without chunks.
        with api(hook_server, keys["alice"]) as c:
            now = c.get(f"/task/{task_id}", params={"include_chunks": "false"}).json()
        assert payloads[2]["data"]["output"] == now["output"]
        assert payloads[2]["data"]["output"]["chunks"] == []
        assert payloads[2]["data"]["output"]["page_count"] == 1
        assert len({r.webhook_id for r in got}) == 3
        # Nothing more for this task: exactly the three.
        assert len([r for r in receiver.requests() if r.json()["data"]["task_id"] == task_id]) == 3

        # The receiver answers before the dispatcher records the attempt: wait for the record.
        def recorded():
            pages = alice.get(f"/webhooks/{hook['id']}/deliveries").json()["deliveries"]
            found = [d for d in pages if d["task_id"] == task_id]
            return found if all(d["status"] != "pending" for d in found) else None

        mine = wait_for(recorded, timeout=20, what="the attempts recorded")
        assert [d["status"] for d in mine] == ["succeeded"] * 3
        assert [d["id"] for d in mine] == [r.webhook_id for r in got]
        assert all(d["attempt_log"][0]["status_code"] == 200 for d in mine)
        assert alice.delete(f"/webhooks/{hook['id']}").status_code == 204
    # GET /metrics counts the recorded attempts by outcome (this module's server: at least these).
    metrics = httpx.get(f"{hook_server.url}/metrics", headers={"Authorization": keys["admin"]})
    assert metrics.status_code == 200, metrics.text
    succeeded = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line.startswith('taskledger_webhook_delivery_attempts_total{outcome="succeeded"}')
    ]
    assert succeeded and succeeded[0] >= 3


def test_a_signature_from_another_secret_is_refused(hook_server, keys, receiver):
    with api(hook_server, keys["alice"]) as alice:
        hook = subscribe(alice, receiver.url, events=["task.created"])
        other = subscribe(alice, receiver.url + "/other", events=["task.created"])
        with api(hook_server, keys["alice"]) as c:
            c.post("/task/parse", json={"file": FILE})
        first = wait_for(
            lambda: [r for r in receiver.requests() if r.path == "/"], timeout=20, what="delivery"
        )[0]
        Webhook(hook["secret"]).verify(first.body, first.headers)
        from standardwebhooks.webhooks import WebhookVerificationError

        with pytest.raises(WebhookVerificationError):
            Webhook(other["secret"]).verify(first.body, first.headers)
        for h in (hook, other):
            alice.delete(f"/webhooks/{h['id']}")
