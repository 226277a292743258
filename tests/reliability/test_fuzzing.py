"""Fuzzing: schemathesis (4.x) over the OpenAPI schema the server serves, for every operation and
every caller.

Each (operation, caller) pair gets a bounded number of generated requests, valid and invalid
ones (schemathesis' positive and negative modes), against a real ``taskledger serve``. Path
``task_id`` values are drawn both from schemathesis and from a pool of real tasks in every state
(alice's and bob's, tasks created by the fuzzing itself included), so the routes are exercised
past "Task not found". Every response is checked for: no 5xx, a documented status code, the
documented content type, a body matching the documented schema, and (for invalid input) a 4xx.

Two adjustments, neither hiding an answer: a claim's valid ``wait_seconds`` is cut to 1 (it is
how long the server may hold the request open, up to a minute: a long poll is not a fault; an
invalid one is sent as generated), and the
live SSE stream is read only as far as its status and headers (it never ends).

TASKLEDGER_SOAK=1 runs many more examples per pair. The figures (requests sent, failures) are
printed at the end (``pytest -s``).
"""

from __future__ import annotations

import collections
import threading

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import FILE, SOAK, add_key, revoke
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server import Server

EXAMPLES = 200 if SOAK else 25
CALLERS = ("alice", "bob", "worker", "admin", "none", "revoked")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
OPERATIONS = [
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/task/parse"),
    ("GET", "/api/v1/task/{task_id}"),
    ("PATCH", "/api/v1/task/{task_id}/parse"),
    ("GET", "/api/v1/task/{task_id}/cancel"),
    ("DELETE", "/api/v1/task/{task_id}"),
    ("GET", "/api/v1/tasks"),
    ("GET", "/api/v1/task/{task_id}/events"),
    ("GET", "/api/v1/task/{task_id}/input"),
    ("GET", "/api/v1/files/{task_id}/input"),
    ("POST", "/api/v1/worker/claim"),
    ("POST", "/api/v1/task/{task_id}/heartbeat"),
    ("POST", "/api/v1/task/{task_id}/complete"),
    ("POST", "/api/v1/task/{task_id}/fail"),
    ("POST", "/api/v1/task/{task_id}/release"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events/stream"),
    ("POST", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/{webhook_id}"),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"),
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"),
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"),
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
]

#: Requests sent and failures found, over the whole module.
FIGURES: collections.Counter = collections.Counter()
FAILURES: list[str] = []
LOCK = threading.Lock()


class Fuzz:
    def __init__(self, server: Server) -> None:
        self.server = server
        db = server.db
        self.keys: dict[str, str | None] = {
            "alice": add_key(db, "alice"),
            "bob": add_key(db, "bob"),
            "worker": add_key(db, "pool", "worker"),
            "admin": add_key(db, "ops", "admin"),
            "none": None,
        }
        revoked = add_key(db, "carol")
        revoke(db, revoked)
        self.keys["revoked"] = revoked
        self.schema = schemathesis.openapi.from_url(f"{server.url}/docs/openapi.json")
        self.session = requests.Session()
        self.pool: list[str] = self.seed()

    def seed(self) -> list[str]:
        """Tasks in every state, for path parameters: Starting, Processing (held by worker
        "w-fuzz", the worker_id the fuzzer often sends), Succeeded, Failed, Cancelled, deleted,
        and one of bob's."""
        alice = self.server.client(self.keys["alice"])
        bob = self.server.client(self.keys["bob"])
        worker = self.server.client(self.keys["worker"])
        try:

            def create(client: httpx.Client, name: str = "seed.txt") -> str:
                response = client.post("/task/parse", json={"file": FILE, "file_name": name})
                assert response.status_code == 200, response.text
                return response.json()["task_id"]

            def claimed() -> str:
                task_id = create(alice)
                claim = worker.post(
                    "/worker/claim", json={"worker_id": "w-fuzz", "lease_seconds": 3600}
                )
                assert claim.json()["task_id"] == task_id, claim.text
                return task_id

            succeeded, failed, processing = claimed(), claimed(), claimed()
            worker.post(
                f"/task/{succeeded}/complete",
                json={"worker_id": "w-fuzz", "output": {"chunks": []}},
            )
            worker.post(f"/task/{failed}/fail", json={"worker_id": "w-fuzz", "error": "seeded"})
            cancelled, deleted = create(alice), create(alice, '文件 "quoted".txt')
            assert alice.get(f"/task/{cancelled}/cancel").status_code == 200
            assert alice.get(f"/task/{deleted}/cancel").status_code == 200
            assert alice.delete(f"/task/{deleted}").status_code == 200
            return [create(alice), processing, succeeded, failed, cancelled, deleted, create(bob)]
        finally:
            for client in (alice, bob, worker):
                client.close()

    def headers(self, caller: str) -> dict[str, str]:
        key = self.keys[caller]
        return {"Authorization": key} if key else {}


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("fuzz") / "ledger.db", "--sweep-interval", "0.5"
    ).start()
    fuzz = Fuzz(server)
    yield fuzz
    fuzz.session.close()
    server.stop()


def test_the_schema_describes_every_route(fuzz):
    served = {(op.ok().method.upper(), op.ok().path) for op in fuzz.schema.get_all_operations()}
    assert served == set(OPERATIONS)


def strategy(operation):
    modes = [GenerationMode.POSITIVE]
    if operation.path_parameters or operation.query or operation.body:
        modes.append(GenerationMode.NEGATIVE)
    return st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))


def send_stream(fuzz: Fuzz, case, operation) -> None:
    """The SSE route: status and headers only (a live stream never ends)."""
    kwargs = case.as_transport_kwargs(base_url=fuzz.server.url)
    with fuzz.session.request(**kwargs, stream=True, timeout=10) as response:
        status = response.status_code
        media = response.headers.get("content-type", "")
        body = response.content[:300] if status != 200 else b""
    declared = operation.definition.raw["responses"]
    assert status < 500, (status, body)
    assert str(status) in declared, (status, body)
    assert media.split(";")[0] in declared[str(status)].get("content", {}), (status, media)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(fuzz, method, path, caller):
    operation = fuzz.schema[path][method]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not SOAK,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy(operation), data=st.data())
    def run(case, data):
        if "task_id" in (case.path_parameters or {}) and data.draw(st.booleans()):
            case.path_parameters = {"task_id": data.draw(st.sampled_from(fuzz.pool))}
        wait = case.body.get("wait_seconds") if isinstance(case.body, dict) else None
        if type(wait) is int and 1 < wait <= 3600:  # a valid long poll: keep it short
            case.body = {**case.body, "wait_seconds": 1}
        # The caller's key goes into the case itself (not added at send time), so the checks
        # judge the request that was really sent: a negative case that dropped the
        # Authorization header gets it back unless the caller has no key.
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = {**headers, **fuzz.headers(caller)}
        with LOCK:
            FIGURES["requests"] += 1
        try:
            if path.endswith("/stream"):
                send_stream(fuzz, case, operation)
                return
            response = case.call(base_url=fuzz.server.url, session=fuzz.session, timeout=30)
            if response.status_code == 200 and path == "/api/v1/task/parse":
                fuzz.pool.append(response.json()["task_id"])
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            with LOCK:
                FIGURES["failures"] += 1
                FAILURES.append(f"{method} {path} as {caller}: {str(exc).splitlines()[:3]}")
            raise

    run()


def test_fuzzing_figures(fuzz):
    """Runs last: the totals for the closing note."""
    print(
        f"\nfuzzing: {FIGURES['requests']} requests over {len(OPERATIONS)} operations x "
        f"{len(CALLERS)} callers, {FIGURES['failures']} failures"
    )
    for failure in FAILURES[:20]:
        print("  ", failure)
    assert FIGURES["requests"] >= len(OPERATIONS) * len(CALLERS)
    assert FIGURES["failures"] == 0
