"""Hostile input gets a clear 4xx, writes nothing, and the service keeps serving.

Oversized bodies (with and without a Content-Length), deeply nested JSON on every route that
takes a body, huge or non-positive paging values, out-of-range cursors, non-UUID ids on every
task route, invalid UTF-8, invalid base64, header injection through ``file_name``, unknown
fields. After each: the plain-text answer names the problem, the log holds exactly the events
it held before, and the server still answers. (tests/api/test_bad_input.py holds the contract's
table of bad requests; this module is the adversarial sweep across routes.)
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from reliability_support import FILE, add_key, event_count

from tests.server import Server

MAX_BODY = 1024 * 1024  # --max-body-mb 1
DEEP = 100_000
NOT_UUIDS = ["not-a-uuid", "0" * 5000, "..%2F..%2Fetc%2Fpasswd", "%00", "%FF%FE", "🙂"]


class Target:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.user = server.client(add_key(server.db, "alice"))
        self.worker = server.client(add_key(server.db, "pool", "worker"))
        created = self.user.post("/task/parse", json={"file": FILE, "file_name": "a.txt"})
        self.processing = created.json()["task_id"]
        claim = self.worker.post("/worker/claim", json={"worker_id": "w1"})
        assert claim.json()["task_id"] == self.processing
        self.starting = self.user.post("/task/parse", json={"file": FILE}).json()["task_id"]

    def close(self) -> None:
        self.user.close()
        self.worker.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("hostile") / "ledger.db",
        "--max-body-mb",
        "1",
        "--max-output-mb",
        "1",
        "--sweep-interval",
        "0",
    ).start()
    target = Target(server)
    yield target
    target.close()
    server.stop()


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def chunks(total: int, size: int = 64 * 1024):
    """A body sent chunked, with no Content-Length: the limit must hold while reading."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


# (id, who, method, path, kwargs, status, message fragment); {processing} / {starting} are
# filled with the target's task ids.
CASES: list[tuple[str, str, str, str, dict[str, Any], int, str]] = [
    (
        "oversized-create",
        "user",
        "POST",
        "/task/parse",
        {"content": b'{"file": "' + b"A" * (MAX_BODY + 10) + b'"}'},
        413,
        "Request body is too large",
    ),
    (
        "oversized-chunked",
        "user",
        "POST",
        "/task/parse",
        {"content": chunks(4 * MAX_BODY)},
        413,
        "Request body is too large",
    ),
    (
        "oversized-update",
        "user",
        "PATCH",
        "/task/{processing}/parse",
        {"content": b" " * (MAX_BODY + 1)},
        413,
        "Request body is too large",
    ),
    (
        "oversized-complete",
        "worker",
        "POST",
        "/task/{processing}/complete",
        {"content": b" " * (2 * MAX_BODY)},
        413,
        "Request body is too large",
    ),
    (
        "nested-create",
        "user",
        "POST",
        "/task/parse",
        {"content": f'{{"file": "{FILE}", "json_schema": {nested(DEEP)}}}'.encode()},
        400,
        "",
    ),
    (
        "nested-update",
        "user",
        "PATCH",
        "/task/{processing}/parse",
        {"content": f'{{"segment_processing": {{"Text": {nested(DEEP)}}}}}'.encode()},
        400,
        "",
    ),
    (
        "nested-claim",
        "worker",
        "POST",
        "/worker/claim",
        {"content": f'{{"worker_id": {nested(DEEP)}}}'.encode()},
        400,
        "",
    ),
    (
        "nested-complete",
        "worker",
        "POST",
        "/task/{processing}/complete",
        {"content": f'{{"worker_id": "w1", "output": {nested(DEEP)}}}'.encode()},
        400,
        "",
    ),
    (
        "nested-array",
        "user",
        "POST",
        "/task/parse",
        {"content": b"[" * DEEP + b"]" * DEEP},
        400,
        "",
    ),
    ("limit-huge", "user", "GET", "/tasks?limit=1000000000", {}, 400, "limit must be between"),
    ("limit-beyond-int64", "user", "GET", "/tasks?limit=" + "9" * 40, {}, 400, "limit"),
    ("page-zero", "user", "GET", "/tasks?page=0&limit=10", {}, 400, "page must be 1 or more"),
    ("page-negative", "user", "GET", "/tasks?page=-5&limit=10", {}, 400, "page must be 1 or more"),
    ("page-huge", "user", "GET", "/tasks?page=100000000000000000000&limit=1", {}, 400, "page"),
    ("feed-limit-huge", "user", "GET", "/events?limit=1000000", {}, 400, "limit"),
    ("feed-after-beyond-int64", "user", "GET", "/events?after=" + "9" * 30, {}, 400, "after"),
    ("feed-after-negative", "user", "GET", "/events?after=-1", {}, 400, "after"),
    (
        "stream-after-beyond-int64",
        "user",
        "GET",
        "/events/stream?after=" + "9" * 30,
        {},
        400,
        "after",
    ),
    (
        "stream-last-event-id-not-a-number",
        "user",
        "GET",
        "/events/stream",
        {"headers": {"Last-Event-ID": "12; drop table events"}},
        400,
        "Last-Event-ID",
    ),
    (
        "stream-last-event-id-unicode-digit",
        "user",
        "GET",
        "/events/stream",
        {"headers": {"Last-Event-ID": "\xb2".encode("latin-1")}},
        400,
        "Last-Event-ID",
    ),
    (
        "stream-last-event-id-huge",
        "user",
        "GET",
        "/events/stream",
        {"headers": {"Last-Event-ID": "9" * 5000}},
        400,
        "Last-Event-ID",
    ),
    (
        "as-of-version-huge",
        "user",
        "GET",
        "/task/{starting}?as_of_version=" + "9" * 40,
        {},
        400,
        "as_of_version",
    ),
    ("as-of-not-a-time", "user", "GET", "/task/{starting}?as_of=%FF%FE", {}, 400, "as_of"),
    (
        "invalid-utf8-body",
        "user",
        "POST",
        "/task/parse",
        {"content": b'{"file": "aGk=", "file_name": "\xff\xfe.txt"}'},
        400,
        "not valid JSON",
    ),
    (
        "lone-surrogate",
        "user",
        "POST",
        "/task/parse",
        {"content": b'{"file": "aGk=", "file_name": "\\ud800.txt"}'},
        400,
        "not valid JSON",
    ),
    (
        "invalid-utf8-update",
        "user",
        "PATCH",
        "/task/{processing}/parse",
        {"content": b'{"model": "\xc3\x28"}'},
        400,
        "not valid JSON",
    ),
    (
        "invalid-base64",
        "user",
        "POST",
        "/task/parse",
        {"json": {"file": "%%%not base64%%%"}},
        400,
        "Invalid base64 data",
    ),
    (
        "base64-bad-padding",
        "user",
        "POST",
        "/task/parse",
        {"json": {"file": "aGk"}},
        400,
        "Invalid base64 data",
    ),
    (
        "file-name-crlf",
        "user",
        "POST",
        "/task/parse",
        {"json": {"file": FILE, "file_name": "a.txt\r\nSet-Cookie: pwned=1"}},
        400,
        "file_name must not contain control characters",
    ),
    (
        "file-name-nel",
        "user",
        "POST",
        "/task/parse",
        {"json": {"file": FILE, "file_name": "a\u0085Set-Cookie: x"}},
        400,
        "file_name must not contain control characters",
    ),
    (
        # Unknown task fields are ignored, as Chunkr ignores them: "owner" changes nothing, and
        # the update is refused for the task's status.
        "unknown-field-update",
        "user",
        "PATCH",
        "/task/{processing}/parse",
        {"json": {"owner": "bob"}},
        400,
        "Task cannot be updated: status is Processing",
    ),
    (
        "unknown-field-claim",
        "worker",
        "POST",
        "/worker/claim",
        {"json": {"worker_id": "w", "task_id": "x"}},
        400,
        "unknown field `task_id`",
    ),
    (
        "unknown-field-heartbeat",
        "worker",
        "POST",
        "/task/{processing}/heartbeat",
        {"json": {"worker_id": "w1", "lease_until": "2999-01-01T00:00:00Z"}},
        400,
        "unknown field `lease_until`",
    ),
    (
        "unknown-field-fail",
        "worker",
        "POST",
        "/task/{processing}/fail",
        {"json": {"worker_id": "w1", "error": "x", "status": "Succeeded"}},
        400,
        "unknown field `status`",
    ),
    (
        "worker-id-control-chars",
        "worker",
        "POST",
        "/worker/claim",
        {"json": {"worker_id": "w\x00\r\n"}},
        400,
        "worker_id",
    ),
    ("form-body", "user", "POST", "/task/parse", {"data": {"file": FILE}}, 400, ""),
    (
        "number-out-of-range",
        "user",
        "POST",
        "/task/parse",
        {"content": f'{{"file": "{FILE}", "expires_in": 1e400}}'.encode()},
        400,
        "a number is out of range",
    ),
    (
        "huge-authorization",
        "user",
        "GET",
        "/tasks",
        {"headers": {"Authorization": "tlk_" + "a" * 20000}},
        401,
        "Invalid or inactive API key",
    ),
]
for route in ("/task/{id}", "/task/{id}/cancel", "/task/{id}/events", "/task/{id}/input"):
    for n, bad in enumerate(NOT_UUIDS):
        CASES.append(
            (
                f"not-uuid-{route}-{n}",
                "user",
                "GET",
                route.replace("{id}", bad),
                {},
                404,
                "Not Found",
            )
        )
for n, bad in enumerate(NOT_UUIDS[:3]):
    CASES += [
        (f"not-uuid-delete-{n}", "user", "DELETE", f"/task/{bad}", {}, 404, "Not Found"),
        (
            f"not-uuid-update-{n}",
            "user",
            "PATCH",
            f"/task/{bad}/parse",
            {"json": {}},
            404,
            "Not Found",
        ),
        (
            f"not-uuid-complete-{n}",
            "worker",
            "POST",
            f"/task/{bad}/complete",
            {"json": {"worker_id": "w1", "output": {"chunks": []}}},
            404,
            "Not Found",
        ),
        (
            f"not-uuid-heartbeat-{n}",
            "worker",
            "POST",
            f"/task/{bad}/heartbeat",
            {"json": {"worker_id": "w1"}},
            404,
            "Not Found",
        ),
    ]


@pytest.mark.parametrize(
    "who, method, path, kwargs, status, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_request_gets_a_clear_4xx_and_changes_nothing(
    target, who, method, path, kwargs, status, message
):
    db = target.server.db
    before = event_count(db)
    client = target.user if who == "user" else target.worker
    path = path.format(processing=target.processing, starting=target.starting)
    response = client.request(method, path, timeout=60, **kwargs)
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("text/plain")
    assert message.lower() in response.text.lower(), response.text[:300]
    assert len(response.text) < 2000  # a message, not an echo of the input
    assert event_count(db) == before
    assert httpx.get(f"{target.server.url}/health", timeout=10).status_code == 200


def test_a_file_name_cannot_break_out_of_the_input_header(target):
    name = 'a"; filename=evil.sh; x=".txt'
    created = target.user.post("/task/parse", json={"file": FILE, "file_name": name})
    assert created.status_code == 200, created.text
    response = target.user.get(f"/task/{created.json()['task_id']}/input")
    assert response.status_code == 200
    disposition = response.headers.get_list("content-disposition")
    assert len(disposition) == 1
    # The plain filename= holds no quote of the caller's (so no second parameter can start).
    plain = disposition[0].split('filename="', 1)[1].split('"', 1)[0]
    assert '"' not in plain and "evil.sh" in plain
    assert disposition[0].count('"') == 2


def test_the_service_keeps_serving_after_the_hostile_sweep(target):
    created = target.user.post("/task/parse", json={"file": FILE, "file_name": "after.txt"})
    assert created.status_code == 200, created.text
    task_id = created.json()["task_id"]
    assert target.user.get(f"/task/{task_id}").json()["status"] == "Starting"
    done = target.worker.post(
        f"/task/{target.processing}/complete", json={"worker_id": "w1", "output": {"chunks": []}}
    )
    assert done.status_code == 200, done.text
    assert json.loads(target.user.get(f"/task/{target.processing}").text)["status"] == "Succeeded"
