"""What a server refuses to post to, and says so with a 400: on the in-process ``server``
(tests/conftest.py), whose settings do not allow private webhooks (serve's default), every
loopback, private and link-local address is refused with a message naming
--allow-private-webhooks; on any server, a scheme other than http(s), a URL with a user name or
password, and an unknown event type. A task whose webhook_url is refused is not made."""

from __future__ import annotations

import pytest

from tests.webhooks.hooks_support import FILE

PRIVATE = [
    "http://127.0.0.1:1/x",
    "http://10.0.0.1/x",
    "http://169.254.169.254/x",
    "http://192.168.1.1/hook",
    "http://[::1]:8080/x",
    "http://localhost/x",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_a_private_address_is_refused_naming_the_flag(server, user_keys, url):
    with server.client(user_keys["alice"]) as alice:
        answer = alice.post("/webhooks", json={"url": url})
        assert answer.status_code == 400, answer.text
        assert "private address" in answer.text
        assert "--allow-private-webhooks" in answer.text
        assert alice.get("/webhooks").json()["webhooks"] == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pass@example.com/x", "user name or password"),
        ("http://user@example.com/x", "user name or password"),
        ("http:///x", "no host"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_a_url_that_is_not_a_plain_http_one_is_refused(server, user_keys, url, why):
    with server.client(user_keys["alice"]) as alice:
        answer = alice.post("/webhooks", json={"url": url})
        assert answer.status_code == 400, answer.text
        assert why in answer.text
        assert answer.text.startswith("Webhook URL refused")


def test_unknown_and_empty_event_types_are_refused(server, user_keys):
    with server.client(user_keys["alice"]) as alice:
        answer = alice.post(
            "/webhooks", json={"url": "http://10.0.0.1/x", "events": ["task.exploded"]}
        )
        assert answer.status_code == 400, answer.text
        assert "task.exploded" in answer.text
        answer = alice.post("/webhooks", json={"url": "http://10.0.0.1/x", "events": []})
        assert answer.status_code == 400, answer.text
        # A task event's own name is not a webhook event type either.
        answer = alice.post("/webhooks", json={"url": "http://10.0.0.1/x", "events": ["claimed"]})
        assert answer.status_code == 400, answer.text
        answer = alice.post("/webhooks", json={"url": "http://10.0.0.1/x", "unknown": 1})
        assert answer.status_code == 400, answer.text
        assert alice.get("/webhooks").json()["webhooks"] == []


def test_a_task_with_a_private_webhook_url_is_not_made(server, user_keys):
    with server.client(user_keys["bob"]) as bob:
        before = bob.get("/tasks").json()
        for url in ("http://127.0.0.1:1/x", "http://10.0.0.1/x", "ftp://example.com/x"):
            answer = bob.post("/task/parse", json={"file": FILE, "webhook_url": url})
            assert answer.status_code == 400, answer.text
            assert "Webhook URL refused" in answer.text
        assert bob.get("/tasks").json() == before
        # An update with one is refused too, and leaves the task as it was.
        with server.client(server.admin_key) as admin:
            feed = admin.get("/events", params={"limit": 1000}).json()["events"]
        assert [e for e in feed if e["type"] == "task_created"] == []


def test_a_private_webhook_url_on_update_is_refused(server, user_keys):
    with server.client(user_keys["alice"]) as alice:
        task_id = alice.post("/task/parse", json={"file": FILE}).json()["task_id"]
        answer = alice.patch(
            f"/task/{task_id}/parse", json={"webhook_url": "http://169.254.169.254/x"}
        )
        assert answer.status_code == 400, answer.text
        assert "--allow-private-webhooks" in answer.text
        events = alice.get(f"/task/{task_id}/events").json()
        assert [e["type"] for e in events] == ["task_created"]
        alice.get(f"/task/{task_id}/cancel")
