"""Per-key rate limiting: off by default; ``taskledger serve --rate-limit R`` turns it on, and a
key past its budget gets 429 with ``Retry-After``, which the chunkr-ai SDK honours and retries.

The first two run on the API in process (``rate_limit_per_second`` is what ``--rate-limit``
sets); the SDK test runs on a real ``taskledger serve --rate-limit 2`` (the SDK speaks to a URL
over the network, and the server's log is read).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from chunkr_ai import Chunkr
from reliability_support import FILE, ROOT, add_key, event_count


def burst(client: httpx.Client, n: int, path: str = "/tasks") -> list[httpx.Response]:
    return [client.get(path) for _ in range(n)]


def test_rate_limiting_is_off_by_default(serve_in_process):
    server = serve_in_process(sweep_interval=0)
    with server.client(add_key(server.db, "alice")) as alice:
        statuses = {r.status_code for r in burst(alice, 200)}
        assert statuses == {200}
        created = [alice.post("/task/parse", json={"file": FILE}).status_code for _ in range(50)]
        assert set(created) == {200}


def test_a_key_past_its_budget_gets_429_with_retry_after(serve_in_process):
    server = serve_in_process(rate_limit_per_second=2, sweep_interval=0)
    alice, bob = add_key(server.db, "alice"), add_key(server.db, "bob")
    with server.client(alice) as a, server.client(bob) as b, server.client(None) as anonymous:
        responses = burst(a, 60)
        statuses = [r.status_code for r in responses]
        assert statuses[0] == 200
        assert 429 in statuses, statuses
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.text == "Rate limit exceeded; retry later"
        retry_after = int(limited.headers["retry-after"])
        assert retry_after >= 1

        # Writes are limited too, and a refused write appends nothing.
        before = event_count(server.db)
        refused = a.post("/task/parse", json={"file": FILE})
        assert refused.status_code == 429
        assert event_count(server.db) == before

        # Per key: bob is not held back by alice's burst; health needs no key and no budget.
        assert b.get("/tasks").status_code == 200
        assert {anonymous.get(f"{server.url}/health").status_code for _ in range(30)} == {200}

        # After Retry-After seconds, alice is served again.
        time.sleep(retry_after)
        assert a.get("/tasks").status_code == 200


def test_the_sdk_retries_a_429_and_succeeds(serve, monkeypatch, tmp_path):
    assert not (ROOT / ".env").exists(), "a .env in the repository would override CHUNKR_URL"
    server = serve("--rate-limit", "2", "--sweep-interval", "0")
    key = add_key(server.db, "alice")
    monkeypatch.setenv("CHUNKR_URL", server.api)
    monkeypatch.setenv("CHUNKR_API_KEY", key)
    document = tmp_path / "notes.txt"
    document.write_text("rate limited, then retried\n")
    chunkr = Chunkr(url=server.api, api_key=key)
    try:
        with server.client(key) as raw:
            # Spend the whole budget, so the SDK's first try is refused.
            for _ in range(200):
                if raw.get("/tasks").status_code == 429:
                    break
            else:
                pytest.fail("the budget never ran out")
        task = chunkr.create_task(document)
    finally:
        chunkr.close()
    assert task.status == "Starting"
    # The server's request log shows the SDK's create refused with 429 before it went through.
    lines = [
        json.loads(line)
        for line in server.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    creates = [line["status"] for line in lines if line.get("route") == "/api/v1/task/parse"]
    assert creates[0] == 429 and creates[-1] == 200, creates
