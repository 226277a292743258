"""Helpers the webhook tests share: clients, subscribing, making tasks, and reading a
subscription's deliveries (the server's own account of them, GET .../deliveries)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.support import wait_for
from tests.webhooks.receiver import Received, Receiver

FILE = base64.b64encode(b"hello webhooks").decode()


def api(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.api, headers={"Authorization": key}, timeout=30)


def new_owner_key(server, prefix: str = "owner") -> str:
    """A user key of an owner no other test uses: its tasks reach only this test's
    subscriptions."""
    from tests.inprocess import add_key

    return add_key(server.db, f"{prefix}-{uuid.uuid4().hex[:8]}")


def subscribe(client: httpx.Client, url: str, **fields: Any) -> dict:
    answer = client.post("/webhooks", json={"url": url, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def create_task(client: httpx.Client, **fields: Any) -> str:
    answer = client.post("/task/parse", json={"file": FILE, "file_name": "a.txt", **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["task_id"]


def deliveries(client: httpx.Client, webhook_id: str) -> list[dict]:
    """Every delivery of the subscription, following the pages."""
    found: list[dict] = []
    after = 0
    while True:
        answer = client.get(f"/webhooks/{webhook_id}/deliveries", params={"after": after})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found += page["deliveries"]
        if page["next_after"] is None:
            return found
        after = page["next_after"]


def delivery_of(client: httpx.Client, webhook_id: str, task_id: str, event: str) -> dict | None:
    for d in deliveries(client, webhook_id):
        if d["task_id"] == task_id and d["event_type"] == event:
            return d
    return None


def wait_delivery(
    client: httpx.Client,
    webhook_id: str,
    task_id: str,
    until: Callable[[dict], bool],
    *,
    event: str = "task.created",
    timeout: float = 30,
    what: str = "the delivery",
) -> dict:
    """The delivery of ``event`` for ``task_id``, once ``until`` holds for it."""

    def look() -> dict | None:
        d = delivery_of(client, webhook_id, task_id, event)
        return d if d is not None and until(d) else None

    return wait_for(look, timeout=timeout, what=what)


def finished(d: dict) -> bool:
    return d["status"] != "pending"


def of_task(receiver: Receiver, task_id: str, path: str | None = None) -> list[Received]:
    """What ``receiver`` got about ``task_id`` (at ``path``, if given)."""
    return [
        r
        for r in receiver.requests()
        if r.json()["data"]["task_id"] == task_id and (path is None or r.path == path)
    ]


def answers(*statuses: int, then: int = 200) -> Callable[[Received], tuple[int, bytes]]:
    """An answer function: ``statuses`` in turn for one webhook-id's requests, ``then`` after."""
    seen: dict[str, int] = {}

    def answer(r: Received) -> tuple[int, bytes]:
        n = seen.get(r.webhook_id, 0)
        seen[r.webhook_id] = n + 1
        status = statuses[n] if n < len(statuses) else then
        return status, f"answer {n + 1}: {status}".encode()

    return answer


def all_events(admin: httpx.Client) -> list[dict]:
    """The whole log as the admin's GET /api/v1/events pages it."""
    found: list[dict] = []
    after = 0
    while True:
        answer = admin.get("/events", params={"after": after, "limit": 1000})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        if not page["events"]:
            return found
        found += page["events"]
        after = page["next_after"]


def webhook_events(admin: httpx.Client, webhook_id: str) -> list[dict]:
    return [e for e in all_events(admin) if e.get("webhook_id") == webhook_id]
