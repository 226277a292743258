"""Every row of the HTTP contract (docs/api.md's routes, docs/design.md's rules), against the
API served in process (``server``, tests/inprocess.py): status code and body, for success and
for each documented error."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from ledger import __version__
from tests.support import unsigned

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TASK_KEYS = {
    "task_id",
    "status",
    "message",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
    "configuration",
    "output",
    "task_url",
}
DEFAULTS = {
    "error_handling": "Fail",
    "high_resolution": True,
    "ocr_strategy": "All",
    "segmentation_strategy": "LayoutAnalysis",
    "llm_processing": {
        "model_id": None,
        "fallback_strategy": "Default",
        "max_completion_tokens": None,
        "temperature": 0.0,
    },
}


def assert_text(response: httpx.Response, status: int, body: str) -> None:
    """A plain-text answer, as Chunkr gives: exact status and exact body."""
    assert (response.status_code, response.text) == (status, body)
    assert response.headers["content-type"].startswith("text/plain")


def parse_time(value: str) -> datetime:
    assert RFC3339.match(value), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    return parsed


# -- POST /task/parse ---------------------------------------------------------------------------


def test_create_answers_a_queued_task_with_defaults_merged(server, alice):
    before = datetime.now(UTC)
    response = alice.post(
        "/task/parse",
        json={
            "file": base64.b64encode(b"some text").decode(),
            "file_name": "notes.txt",
            "chunk_processing": {"target_length": 100},
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    task = response.json()
    assert TASK_KEYS <= set(task)
    assert (task["status"], task["message"]) == ("Starting", "Task queued")
    assert task["task_url"] == f"{server.api}/task/{task['task_id']}"
    created = parse_time(task["created_at"])
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)
    assert (task["started_at"], task["finished_at"], task["expires_at"]) == (None, None, None)
    config = task["configuration"]
    assert config["chunk_processing"] == {
        "ignore_headers_and_footers": True,
        "target_length": 100,
        "tokenizer": {"Enum": "Word"},
    }
    assert {k: config[k] for k in DEFAULTS} == DEFAULTS
    assert task["output"] is None or task["output"]["chunks"] == []


def test_create_without_configuration_gets_every_default(alice, create):
    task = create(alice)
    config = task["configuration"]
    assert config["chunk_processing"] == {
        "ignore_headers_and_footers": True,
        "target_length": 512,
        "tokenizer": {"Enum": "Word"},
    }
    assert {k: config[k] for k in DEFAULTS} == DEFAULTS


def test_create_with_invalid_base64_is_400(alice):
    response = alice.post("/task/parse", json={"file": "not base64 !!!", "file_name": "a.txt"})
    assert_text(response, 400, "Invalid base64 data")


def test_create_without_a_key_is_401(server):
    with server.client(None) as anonymous:
        response = anonymous.post("/task/parse", json={"file": "aGk="})
    assert_text(response, 401, "Authorization header is missing")


@pytest.mark.parametrize(
    "header", ["tlk_000000000000_wrong", "garbage", "Bearer tlk_000000000000_x"]
)
def test_create_with_a_bad_key_is_401(server, header):
    with server.client(header) as client:
        response = client.post("/task/parse", json={"file": "aGk="})
    assert_text(response, 401, "Invalid or inactive API key")


def test_create_over_the_body_limit_is_413(database):
    from tests.inprocess import InProcessServer

    # ``serve --max-body-mb 1`` (the flag itself: tests/reliability/test_hostile_input.py)
    small = InProcessServer(database, max_body_bytes=1024 * 1024).start()
    try:
        assert small.admin_key
        with small.client(small.admin_key) as client:
            under = base64.b64encode(b"x" * (512 * 1024)).decode()
            assert client.post("/task/parse", json={"file": under}).status_code == 200
            over = base64.b64encode(b"x" * (1024 * 1024)).decode()
            response = client.post("/task/parse", json={"file": over})
            assert response.status_code == 413
            assert response.text.startswith("Request body is too large (limit ")
            # The server is still fine afterwards.
            assert client.get("/tasks").status_code == 200
    finally:
        small.stop()


def test_bearer_prefix_works_as_well_as_the_raw_key(server, user_keys, create, alice):
    task = create(alice)
    with server.client(f"Bearer {user_keys['alice']}") as bearer:
        got = bearer.get(f"/task/{task['task_id']}")
        assert got.status_code == 200
        assert got.json()["task_id"] == task["task_id"]
        made = bearer.post("/task/parse", json={"file": "aGk="})
        assert made.status_code == 200
        assert made.json()["status"] == "Starting"


# -- GET /task/{id} -----------------------------------------------------------------------------


def test_get_answers_the_task(alice, create):
    task = create(alice)
    response = alice.get(f"/task/{task['task_id']}")
    assert response.status_code == 200
    got = response.json()
    assert got["task_id"] == task["task_id"]
    assert (got["status"], got["message"]) == ("Starting", "Task queued")
    # (Apart from when their input_file_url links were signed: tests/api/test_links.py.)
    assert unsigned(got["configuration"]) == unsigned(task["configuration"])
    assert got["created_at"] == task["created_at"]
    assert got["task_url"] == task["task_url"]


def test_get_of_an_unknown_task_is_404(alice):
    assert_text(alice.get(f"/task/{'0' * 8}-0000-4000-8000-{'0' * 12}"), 404, "Task not found")


def test_get_includes_chunks_by_default(alice, create, ledger):
    task = create(alice)
    output = ledger.succeed(task["task_id"])
    got = alice.get(f"/task/{task['task_id']}").json()
    assert got["status"] == "Succeeded"
    assert got["output"]["chunks"] == output["chunks"]
    assert (got["output"]["file_name"], got["output"]["page_count"], got["output"]["pdf_url"]) == (
        "a.txt",
        1,
        None,
    )
    without = alice.get(f"/task/{task['task_id']}", params={"include_chunks": "false"}).json()
    assert without["output"]["chunks"] == []
    assert without["output"]["page_count"] == 1


# -- PATCH /task/{id}/parse ---------------------------------------------------------------------


def test_update_of_a_starting_task_is_400(alice, create):
    task = create(alice)
    response = alice.patch(
        f"/task/{task['task_id']}/parse", json={"chunk_processing": {"target_length": 7}}
    )
    assert_text(response, 400, "Task cannot be updated: status is Starting")


def test_update_of_a_succeeded_task_queues_it_with_the_merged_configuration(alice, create, ledger):
    task = create(alice)
    ledger.succeed(task["task_id"])
    response = alice.patch(
        f"/task/{task['task_id']}/parse", json={"chunk_processing": {"target_length": 7}}
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert (updated["status"], updated["message"]) == ("Starting", "Task queued for update")
    assert updated["task_id"] == task["task_id"]
    assert updated["configuration"]["chunk_processing"] == {
        "ignore_headers_and_footers": True,
        "target_length": 7,
        "tokenizer": {"Enum": "Word"},
    }
    assert {k: updated["configuration"][k] for k in DEFAULTS} == DEFAULTS
    got = alice.get(f"/task/{task['task_id']}").json()
    assert (got["status"], got["configuration"]) == ("Starting", updated["configuration"])


def test_update_of_an_unknown_task_is_404(alice):
    response = alice.patch(f"/task/{'1' * 8}-0000-4000-8000-{'0' * 12}/parse", json={})
    assert_text(response, 404, "Task not found")


# -- GET /task/{id}/cancel ----------------------------------------------------------------------


def test_cancel_then_cancel_again(alice, create):
    task = create(alice)
    assert_text(alice.get(f"/task/{task['task_id']}/cancel"), 200, "Task cancelled")
    got = alice.get(f"/task/{task['task_id']}").json()
    assert (got["status"], got["message"]) == ("Cancelled", "Task cancelled")
    assert_text(
        alice.get(f"/task/{task['task_id']}/cancel"),
        400,
        "Task cannot be cancelled: status is Cancelled",
    )


def test_cancel_of_a_succeeded_task_is_400(alice, create, ledger):
    task = create(alice)
    ledger.succeed(task["task_id"])
    assert_text(
        alice.get(f"/task/{task['task_id']}/cancel"),
        400,
        "Task cannot be cancelled: status is Succeeded",
    )


def test_cancel_of_an_unknown_task_is_404(alice):
    assert_text(
        alice.get(f"/task/{'2' * 8}-0000-4000-8000-{'0' * 12}/cancel"), 404, "Task not found"
    )


def test_cancelling_a_pending_update_restores_the_prior_state(alice, create, ledger):
    task = create(alice)
    output = ledger.succeed(task["task_id"])
    before = alice.get(f"/task/{task['task_id']}").json()
    assert before["status"] == "Succeeded"
    patched = alice.patch(
        f"/task/{task['task_id']}/parse", json={"chunk_processing": {"target_length": 9}}
    )
    assert patched.json()["status"] == "Starting"
    assert_text(alice.get(f"/task/{task['task_id']}/cancel"), 200, "Task cancelled")
    after = alice.get(f"/task/{task['task_id']}").json()
    assert after["status"] == "Succeeded"
    assert unsigned(after["configuration"]) == unsigned(before["configuration"])
    assert after["configuration"]["chunk_processing"]["target_length"] == 512
    assert after["output"] == before["output"]
    assert after["output"]["chunks"] == output["chunks"]
    assert (after["message"], after["finished_at"], after["expires_at"]) == (
        before["message"],
        before["finished_at"],
        before["expires_at"],
    )
    assert ledger.event_types(task["task_id"]) == [
        "task_created",
        "claimed",
        "succeeded",
        "update_requested",
        "cancelled",
    ]


# -- DELETE /task/{id} --------------------------------------------------------------------------


def test_delete_of_an_active_task_is_400(alice, create):
    task = create(alice)
    assert_text(
        alice.delete(f"/task/{task['task_id']}"), 400, "Task cannot be deleted: status is Starting"
    )
    assert alice.get(f"/task/{task['task_id']}").json()["status"] == "Starting"


def test_delete_of_a_cancelled_task_then_it_is_gone(alice, create, ledger):
    task = create(alice)
    alice.get(f"/task/{task['task_id']}/cancel")
    assert_text(alice.delete(f"/task/{task['task_id']}"), 200, "Task deleted")
    assert_text(alice.get(f"/task/{task['task_id']}"), 404, "Task not found")
    assert_text(alice.delete(f"/task/{task['task_id']}"), 404, "Task not found")
    assert_text(alice.get(f"/task/{task['task_id']}/cancel"), 404, "Task not found")
    assert task["task_id"] not in {t["task_id"] for t in alice.get("/tasks").json()}
    # The history stays for audit.
    assert ledger.event_types(task["task_id"]) == ["task_created", "cancelled", "deleted"]


def test_delete_of_a_succeeded_task(alice, create, ledger):
    task = create(alice)
    ledger.succeed(task["task_id"])
    assert_text(alice.delete(f"/task/{task['task_id']}"), 200, "Task deleted")
    assert_text(alice.get(f"/task/{task['task_id']}"), 404, "Task not found")


# -- GET /tasks ---------------------------------------------------------------------------------


def test_list_is_a_bare_array_newest_first(server, fresh_user, create):
    with server.client(fresh_user()) as carol:
        ids = [create(carol)["task_id"] for _ in range(3)]
        response = carol.get("/tasks")
        assert response.status_code == 200
        listed = response.json()
        assert isinstance(listed, list)
        assert [t["task_id"] for t in listed] == ids[::-1]
        created = [parse_time(t["created_at"]) for t in listed]
        assert created == sorted(created, reverse=True)
        assert all(t["task_url"] == f"{server.api}/task/{t['task_id']}" for t in listed)


def test_list_pages(server, fresh_user, create):
    with server.client(fresh_user()) as carol:
        ids = [create(carol)["task_id"] for _ in range(5)][::-1]
        pages = [
            [t["task_id"] for t in carol.get("/tasks", params={"page": p, "limit": 2}).json()]
            for p in (1, 2, 3, 4)
        ]
        assert pages == [ids[0:2], ids[2:4], ids[4:5], []]
        assert [t["task_id"] for t in carol.get("/tasks", params={"limit": 3}).json()] == ids[:3]


def test_list_filters_on_start_and_end(server, fresh_user, create):
    with server.client(fresh_user()) as carol:
        tasks = []
        for _ in range(3):
            tasks.append(create(carol))
            time.sleep(0.01)
        first, middle, last = tasks
        since = carol.get("/tasks", params={"start": middle["created_at"]}).json()
        assert [t["task_id"] for t in since] == [last["task_id"], middle["task_id"]]
        until = carol.get("/tasks", params={"end": middle["created_at"]}).json()
        assert [t["task_id"] for t in until] == [middle["task_id"], first["task_id"]]
        both = carol.get(
            "/tasks", params={"start": middle["created_at"], "end": middle["created_at"]}
        ).json()
        assert [t["task_id"] for t in both] == [middle["task_id"]]
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert carol.get("/tasks", params={"start": future}).json() == []


def test_list_leaves_chunks_out_by_default(server, fresh_user, create, ledger):
    with server.client(fresh_user()) as carol:
        task = create(carol)
        output = ledger.succeed(task["task_id"])
        (listed,) = carol.get("/tasks").json()
        assert listed["status"] == "Succeeded"
        assert listed["output"]["chunks"] == []
        (with_chunks,) = carol.get("/tasks", params={"include_chunks": "true"}).json()
        assert with_chunks["output"]["chunks"] == output["chunks"]


def test_list_without_chunks_keeps_the_rest_of_the_output(server, fresh_user, create, ledger):
    with server.client(fresh_user()) as carol:
        task = create(carol)
        ledger.succeed(task["task_id"])
        (listed,) = carol.get("/tasks").json()
        one = carol.get(f"/task/{task['task_id']}", params={"include_chunks": "false"}).json()
        assert listed["output"] == one["output"]
        assert listed["output"]["page_count"] == 1


def test_list_page_without_limit_is_400(alice):
    response = alice.get("/tasks", params={"page": 1})
    assert_text(response, 400, "Limit is required when page is provided")


# -- GET /health --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/"])
def test_health_needs_no_key(server, path):
    with server.client(None) as anonymous:
        response = anonymous.get(f"{server.url}{path}")
    assert_text(response, 200, f"OK - Version {__version__}")


# -- time travel --------------------------------------------------------------------------------


def test_as_of_version_answers_the_task_as_it_was(alice, create):
    task = create(alice)
    alice.get(f"/task/{task['task_id']}/cancel")
    assert alice.get(f"/task/{task['task_id']}").json()["status"] == "Cancelled"
    first = alice.get(f"/task/{task['task_id']}", params={"as_of_version": 1})
    assert first.status_code == 200
    assert (first.json()["status"], first.json()["message"]) == ("Starting", "Task queued")
    assert first.json()["task_id"] == task["task_id"]
    second = alice.get(f"/task/{task['task_id']}", params={"as_of_version": 2}).json()
    assert (second["status"], second["message"]) == ("Cancelled", "Task cancelled")


@pytest.mark.parametrize("version", [3, 100, 0])
def test_as_of_version_out_of_range_is_400(alice, create, version):
    task = create(alice)
    alice.get(f"/task/{task['task_id']}/cancel")
    response = alice.get(f"/task/{task['task_id']}", params={"as_of_version": version})
    assert response.status_code == 400
    assert "as_of_version" in response.text
    assert response.headers["content-type"].startswith("text/plain")


def test_input_file_url_serves_the_input(server, alice):
    data = b"the original bytes\n"
    task = alice.post(
        "/task/parse", json={"file": base64.b64encode(data).decode(), "file_name": "in.txt"}
    ).json()
    url = task["configuration"]["input_file_url"]
    # A signed link (tests/api/test_links.py has the rest), fetched with no key.
    assert url.startswith(f"{server.api}/files/{task['task_id']}/input?expires=")
    with server.client(None) as anyone:
        response = anyone.get(url)
    assert (response.status_code, response.content) == (200, data)
    # The authenticated route is still there.
    response = alice.get(f"{task['task_url']}/input")
    assert (response.status_code, response.content) == (200, data)


def test_input_of_a_task_with_a_non_latin1_file_name(alice):
    task = alice.post("/task/parse", json={"file": "aGk=", "file_name": "文件.txt"}).json()
    response = alice.get(f"{task['task_url']}/input")
    assert (response.status_code, response.content) == (200, b"hi")


# -- the rest of the lifecycle rules the contract names -----------------------------------------


def test_a_failed_task_can_be_updated_and_deleted(alice, create, ledger):
    task = create(alice)
    ledger.fail(task["task_id"], "no pages")
    got = alice.get(f"/task/{task['task_id']}").json()
    assert (got["status"], got["message"]) == ("Failed", "no pages")
    assert_text(
        alice.get(f"/task/{task['task_id']}/cancel"),
        400,
        "Task cannot be cancelled: status is Failed",
    )
    updated = alice.patch(f"/task/{task['task_id']}/parse", json={"high_resolution": False})
    assert updated.status_code == 200
    assert (updated.json()["status"], updated.json()["configuration"]["high_resolution"]) == (
        "Starting",
        False,
    )
    alice.get(f"/task/{task['task_id']}/cancel")
    assert alice.get(f"/task/{task['task_id']}").json()["status"] == "Failed"
    assert_text(alice.delete(f"/task/{task['task_id']}"), 200, "Task deleted")


def test_update_with_an_empty_object_keeps_the_configuration(alice, create, ledger):
    task = create(alice)
    ledger.succeed(task["task_id"])
    before = alice.get(f"/task/{task['task_id']}").json()
    response = alice.patch(f"/task/{task['task_id']}/parse", content=b"{}")
    assert response.status_code == 200, response.text
    assert unsigned(response.json()["configuration"]) == unsigned(before["configuration"])
    # Chunks are shown only while Succeeded, not while the update is pending.
    assert response.json()["output"]["chunks"] == []


def test_an_expired_task_is_not_found(alice, create, ledger):
    task = create(alice, expires_in=1)
    assert task["configuration"]["expires_in"] == 1
    ledger.succeed(task["task_id"])
    got = alice.get(f"/task/{task['task_id']}").json()
    assert parse_time(got["expires_at"]) == parse_time(got["finished_at"]) + timedelta(seconds=1)
    deadline = time.monotonic() + 5
    while alice.get(f"/task/{task['task_id']}").status_code == 200:
        assert time.monotonic() < deadline, "task still visible long after expires_at"
        time.sleep(0.1)
    assert_text(alice.get(f"/task/{task['task_id']}"), 404, "Task not found")
    assert task["task_id"] not in {t["task_id"] for t in alice.get("/tasks").json()}


def test_expires_at_is_accepted_as_an_alias_of_expires_in(alice, create):
    assert create(alice, expires_at=60)["configuration"]["expires_in"] == 60


def test_list_time_filters_accept_any_offset(server, fresh_user, create):
    with server.client(fresh_user()) as carol:
        first = create(carol)
        time.sleep(0.01)
        second = create(carol)
        at = parse_time(second["created_at"]).astimezone(timezone(timedelta(hours=2)))
        since = carol.get("/tasks", params={"start": at.isoformat()}).json()
        assert [t["task_id"] for t in since] == [second["task_id"]]
        just_before = (at - timedelta(microseconds=1)).isoformat()
        until = carol.get("/tasks", params={"end": just_before}).json()
        assert [t["task_id"] for t in until] == [first["task_id"]]


# -- check, then append, atomically (concurrent requests) ------------------------------------------


def race(server, key: str, n: int, send) -> list[httpx.Response]:
    """``n`` clients send at once (a barrier releases them together)."""
    import threading

    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        with server.client(key) as client:
            barrier.wait(10)
            try:
                results[i] = send(client)
            except BaseException as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, httpx.Response) for r in results), results
    return results


def test_concurrent_cancels_have_one_winner(server, user_keys, alice, create, ledger):
    task = create(alice)
    url = f"/task/{task['task_id']}/cancel"
    results = race(server, user_keys["alice"], 8, lambda c: c.get(url))
    answers = sorted((r.status_code, r.text) for r in results)
    assert (
        answers
        == [(200, "Task cancelled")] + [(400, "Task cannot be cancelled: status is Cancelled")] * 7
    )
    assert ledger.event_types(task["task_id"]) == ["task_created", "cancelled"]


def test_concurrent_updates_have_one_winner(server, user_keys, alice, create, ledger):
    task = create(alice)
    ledger.succeed(task["task_id"])
    results = race(
        server,
        user_keys["alice"],
        8,
        lambda c: c.patch(f"/task/{task['task_id']}/parse", json={"high_resolution": False}),
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [400] * 7
    assert {r.text for r in results if r.status_code == 400} == {
        "Task cannot be updated: status is Starting"
    }
    assert ledger.event_types(task["task_id"]).count("update_requested") == 1
