"""Access: every route x every caller answers as docs/design.md (the access policy) and
docs/api.md's role rules say.

Callers: alice (a user, the task's owner), bob (another user), a worker key, an admin key, no
key, and a revoked key. Each cell of the matrix gets a task of its own in the state the route
needs, so the only thing that varies along a row is who asks. Then: the lists and feeds show
each user only their own tasks, and the database (and the server's log) holds no plaintext key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from reliability_support import FILE, add_key, query, revoke

from api.composition import Store
from ledger.commands import ClaimTask, CompleteTask
from ledger.events import blob_ref
from ledger.log import Actor, Envelope
from tests.server import Server

CALLERS = ("alice", "bob", "worker", "admin", "none", "revoked")
OUTPUT = {"chunks": []}


class World:
    """One server, a key per caller, and a side door (the ledger file) to put tasks into the
    state a route needs."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.keys: dict[str, str | None] = {
            "alice": add_key(server.db, "alice"),
            "bob": add_key(server.db, "bob"),
            "worker": add_key(server.db, "pool", "worker"),
            "admin": add_key(server.db, "ops", "admin"),
            "none": None,
        }
        revoked = add_key(server.db, "carol")
        revoke(server.db, revoked)  # before its first use: no cached authentication
        self.keys["revoked"] = revoked
        self.clients = {name: server.client(key) for name, key in self.keys.items()}
        self.store = Store(server.db)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.store.close()

    # -- tasks in a given state, owned by alice ----------------------------------------------

    def starting(self) -> str:
        response = self.clients["alice"].post(
            "/task/parse", json={"file": FILE, "file_name": "a.txt"}
        )
        assert response.status_code == 200, response.text
        return response.json()["task_id"]

    def processing(self, worker_id: str) -> str:
        task_id = self.starting()
        now = datetime.now(UTC)
        self.store.handler.execute(
            ClaimTask(
                task_id=task_id, at=now, worker_id=worker_id, lease_until=now + timedelta(hours=1)
            ),
            Envelope(recorded_at=now, actor=Actor(key_id=None, role="worker")),
        )
        return task_id

    def succeeded(self) -> str:
        task_id = self.processing("setup")
        data = json.dumps(OUTPUT).encode()
        now = datetime.now(UTC)
        self.store.handler.execute(
            CompleteTask(task_id=task_id, at=now, worker_id="setup", output=blob_ref(data)),
            Envelope(recorded_at=now, actor=Actor(key_id=None, role="worker")),
            blobs=[data],
        )
        return task_id

    def cancelled(self) -> str:
        task_id = self.starting()
        assert self.clients["alice"].get(f"/task/{task_id}/cancel").status_code == 200
        return task_id

    def deleted(self) -> str:
        task_id = self.cancelled()
        assert self.clients["alice"].delete(f"/task/{task_id}").status_code == 200
        return task_id


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("access") / "ledger.db", "--sweep-interval", "0"
    ).start()
    world = World(server)
    yield world
    world.close()
    server.stop()


@dataclass
class Route:
    name: str
    method: str
    #: The path; ``{task}`` is filled with the task ``setup`` made.
    path: str
    #: caller -> status, for the four callers with a valid key (no key / revoked: 401).
    expected: dict[str, int]
    setup: Callable[[World, str], str | None] = lambda world, caller: None
    body: Callable[[str], Any] = lambda caller: None
    stream: bool = False
    #: True: no key needed.
    public: bool = False


def holder(caller: str) -> str:
    return f"w-{caller}"


def queue_one(world: World, caller: str) -> None:
    """A claimable task in the queue (the claim takes the oldest; its id is not in the path)."""
    world.starting()


USER_ONLY = {"alice": 200, "bob": 404, "worker": 403, "admin": 200}
READERS = {"alice": 200, "bob": 404, "worker": 200, "admin": 200}
WORKERS = {"alice": 403, "bob": 403, "worker": 200, "admin": 200}
SCOPED = {"alice": 200, "bob": 200, "worker": 403, "admin": 200}

ROUTES = [
    Route(
        "create",
        "POST",
        "/task/parse",
        {"alice": 200, "bob": 200, "worker": 403, "admin": 200},
        body=lambda c: {"file": FILE},
    ),
    Route("get", "GET", "/task/{task}", READERS, setup=lambda w, c: w.starting()),
    Route(
        "get-as-of",
        "GET",
        "/task/{task}?as_of_version=1",
        READERS,
        setup=lambda w, c: w.cancelled(),
    ),
    Route(
        "update",
        "PATCH",
        "/task/{task}/parse",
        USER_ONLY,
        setup=lambda w, c: w.succeeded(),
        body=lambda c: {"high_resolution": False},
    ),
    Route("cancel", "GET", "/task/{task}/cancel", USER_ONLY, setup=lambda w, c: w.starting()),
    Route("delete", "DELETE", "/task/{task}", USER_ONLY, setup=lambda w, c: w.cancelled()),
    Route("list", "GET", "/tasks", SCOPED),
    Route("history", "GET", "/task/{task}/events", READERS, setup=lambda w, c: w.starting()),
    Route(
        "input-queued",
        "GET",
        "/task/{task}/input",
        {"alice": 200, "bob": 404, "worker": 404, "admin": 200},
        setup=lambda w, c: w.starting(),
    ),
    Route(
        "input-processing",
        "GET",
        "/task/{task}/input",
        READERS,
        setup=lambda w, c: w.processing("someone"),
    ),
    Route(
        "claim",
        "POST",
        "/worker/claim",
        WORKERS,
        setup=queue_one,
        body=lambda c: {"worker_id": holder(c)},
    ),
    Route(
        "heartbeat",
        "POST",
        "/task/{task}/heartbeat",
        WORKERS,
        setup=lambda w, c: w.processing(holder(c)),
        body=lambda c: {"worker_id": holder(c)},
    ),
    Route(
        "complete",
        "POST",
        "/task/{task}/complete",
        WORKERS,
        setup=lambda w, c: w.processing(holder(c)),
        body=lambda c: {"worker_id": holder(c), "output": OUTPUT},
    ),
    Route(
        "fail",
        "POST",
        "/task/{task}/fail",
        WORKERS,
        setup=lambda w, c: w.processing(holder(c)),
        body=lambda c: {"worker_id": holder(c), "error": "broken"},
    ),
    Route(
        "release",
        "POST",
        "/task/{task}/release",
        WORKERS,
        setup=lambda w, c: w.processing(holder(c)),
        body=lambda c: {"worker_id": holder(c)},
    ),
    Route("feed", "GET", "/events", SCOPED),
    Route("stream", "GET", "/events/stream", SCOPED, stream=True),
    # A deleted task is 404 everywhere; only an admin may still audit its history.
    Route(
        "get-deleted",
        "GET",
        "/task/{task}",
        {c: 404 for c in CALLERS},
        setup=lambda w, c: w.deleted(),
    ),
    Route(
        "history-deleted",
        "GET",
        "/task/{task}/events",
        {"alice": 404, "bob": 404, "worker": 404, "admin": 200},
        setup=lambda w, c: w.deleted(),
    ),
    Route(
        "as-of-deleted",
        "GET",
        "/task/{task}?as_of_version=2",
        {"alice": 404, "bob": 404, "worker": 404, "admin": 200},
        setup=lambda w, c: w.deleted(),
    ),
    Route(
        "cancel-deleted",
        "GET",
        "/task/{task}/cancel",
        {"alice": 404, "bob": 404, "worker": 403, "admin": 404},
        setup=lambda w, c: w.deleted(),
    ),
    Route("health", "GET", "/health", {c: 200 for c in CALLERS}, public=True),
]

UNAUTHORISED = {
    "none": "Authorization header is missing",
    "revoked": "Invalid or inactive API key",
}


def count_events(world: World, task_id: str | None) -> int:
    if task_id is None:
        return query(world.server.db, "SELECT count(*) FROM events")[0][0]
    return query(
        world.server.db, "SELECT count(*) FROM events WHERE stream_id = ?", (f"task-{task_id}",)
    )[0][0]


def expected_status(route: Route, caller: str) -> int:
    if caller in UNAUTHORISED and not route.public:
        return 401
    return route.expected[caller]


def send(world: World, route: Route, caller: str, path: str) -> httpx.Response:
    client = world.clients[caller]
    url = world.server.url + path if route.public else path  # public routes: outside /api/v1
    body = route.body(caller)
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    if route.stream:
        with client.stream(route.method, url, timeout=10, **kwargs) as response:
            if response.status_code != 200:
                response.read()  # an error body ends; a live stream does not
            return response
    return client.request(route.method, url, **kwargs)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_access(world, route, caller):
    task_id = route.setup(world, caller)
    path = route.path.replace("{task}", task_id or "")
    before = count_events(world, task_id)
    response = send(world, route, caller, path)
    expected = expected_status(route, caller)
    assert response.status_code == expected, (
        route.name,
        caller,
        response.text if not route.stream else "",
    )
    if expected == 401:
        assert response.text == UNAUTHORISED[caller]
        assert response.headers["www-authenticate"].startswith("Bearer")
    elif expected == 403:
        role = "user" if caller in ("alice", "bob") else caller
        assert response.text.startswith(f"A {role} key cannot "), response.text
    elif expected == 404:
        assert response.text.startswith("Task not found"), response.text
    elif route.stream:
        assert response.headers["content-type"].startswith("text/event-stream")
    # What was refused left no trace in the task's history.
    if expected != 200:
        assert count_events(world, task_id) == before


def test_lists_and_feeds_show_users_only_their_own(world):
    task_id = world.starting()
    seen = {}
    for caller in ("alice", "bob", "admin"):
        client = world.clients[caller]
        listed = {t["task_id"] for t in client.get("/tasks", params={"limit": 1000}).json()}
        feed = client.get("/events", params={"task_id": task_id, "limit": 1000}).json()["events"]
        history = client.get("/events", params={"limit": 1000}).json()["events"]
        seen[caller] = (task_id in listed, len(feed) > 0, {e["task_id"] for e in history})
    assert seen["alice"][:2] == (True, True)
    assert seen["admin"][:2] == (True, True)
    assert seen["bob"][:2] == (False, False)
    # bob's whole feed holds no event of alice's tasks.
    alice_tasks = {
        r[0] for r in query(world.server.db, "SELECT task_id FROM tasks WHERE owner = 'alice'")
    }
    assert not seen["bob"][2] & alice_tasks


def test_the_database_and_the_log_hold_no_plaintext_key(world):
    # Every key has been used by now (the matrix ran first in this module; use them again here
    # so this test stands on its own).
    for client in world.clients.values():
        client.get("/tasks")
    db = world.server.db
    stored = {r[0]: r[1] for r in query(db, "SELECT key_id, key_hash FROM api_keys")}
    files = [db, db.with_name(db.name + "-wal"), world.server.log_path]
    blobs = b"".join(path.read_bytes() for path in files if path.exists())
    for name, key in world.keys.items():
        if key is None:
            continue
        key_id, secret = key.split("_")[1], key.split("_", 2)[2]
        assert stored[key_id] == hashlib.sha256(key.encode()).hexdigest()
        assert key.encode() not in blobs, f"{name}'s key is stored in plain text"
        assert secret.encode() not in blobs, f"{name}'s key secret is stored in plain text"
    dump = "\n".join(
        str(row)
        for table in ("api_keys", "events", "idempotency_outcomes")
        for row in query(db, f"SELECT * FROM {table}")
    )
    for key in filter(None, world.keys.values()):
        assert key.split("_", 2)[2] not in dump
