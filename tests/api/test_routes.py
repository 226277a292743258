"""The routes as Litestar builds them from their signatures: the schema documents what they
read, their log line carries the command the service ran, and their query parameters are
checked.

The log line is read from a real ``taskledger serve``'s log (``real_server``: the request log as
``serve`` configures it, JSON lines on its stderr); the rest runs against the API in process."""

from __future__ import annotations

import json
import time

from tests.inprocess import add_key


def test_the_schema_documents_what_the_routes_read(server):
    with server.client(None) as anonymous:
        spec = anonymous.get(f"{server.url}/docs/openapi.json").json()
    get_task = spec["paths"]["/api/v1/task/{task_id}"]["get"]
    params = {p["name"]: p for p in get_task["parameters"]}
    assert params["task_id"]["in"] == "path" and params["task_id"]["required"] is True
    as_of_version = params["as_of_version"]["schema"]
    assert {"type": "integer"} in as_of_version["oneOf"] and as_of_version["minimum"] == 1
    assert params["include_chunks"]["schema"]["type"] == "boolean"
    assert get_task["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "TaskResponse"
    )
    create = spec["paths"]["/api/v1/task/parse"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "file" in spec["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]
    claim = spec["paths"]["/api/v1/worker/claim"]["post"]
    assert claim["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ClaimedTaskResponse"
    )
    listing = spec["paths"]["/api/v1/tasks"]["get"]
    params = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert {"type": "integer"} in params["limit"]["oneOf"]
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 1000)
    assert {"type": "string", "format": "date-time"} in params["start"]["oneOf"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    cancel = spec["paths"]["/api/v1/task/{task_id}/cancel"]["get"]
    assert "text/plain" in cancel["responses"]["200"]["content"]


def test_the_log_line_carries_the_command_and_the_request_id(real_server, create):
    server = real_server
    with server.client(add_key(server.db, "alice")) as alice:
        task = create(alice)
        response = alice.get(
            f"/task/{task['task_id']}/cancel", headers={"X-Request-Id": "trace-42"}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in server.log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        mine = [line for line in lines if line.get("request_id") == "trace-42"]
        if mine:
            break
        time.sleep(0.05)
    assert mine, "no log line for the request"
    (line,) = mine
    assert line["event"] == "request" and line["status"] == 200
    assert line["route"] == "/api/v1/task/{task_id}/cancel"
    assert line["command"] == "CancelTask" and line["outcome"] == "appended"
    assert line["task_id"] == task["task_id"] and line["events"] == 1


def test_query_values_are_checked(alice, create):
    task = create(alice)
    for query, name in [
        ("include_chunks=maybe", "include_chunks"),
        ("base64_urls=2x", "base64_urls"),
        ("as_of_version=0", "as_of_version"),
        ("as_of_version=-1", "as_of_version"),
        ("as_of=yesterday", "as_of"),
    ]:
        response = alice.get(f"/task/{task['task_id']}?{query}")
        assert response.status_code == 400, query
        assert name in response.text and response.headers["content-type"].startswith("text/plain")
    assert (
        alice.get(f"/task/{task['task_id']}?include_chunks=false&base64_urls=true").status_code
        == 200
    )
    assert alice.get(f"/task/{task['task_id']}?as_of_version=1").json()["status"] == "Starting"


def test_task_ids_are_time_ordered_uuids(server, alice, create):
    import uuid

    from api.ids import new_task_id

    made = []
    for _ in range(3):
        made.append(create(alice)["task_id"])
        time.sleep(0.002)  # the next id falls in a later millisecond
    for task_id in made:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id  # canonical lower-case form, as the SDK expects
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert made == sorted(made)
    # Within one millisecond the random part decides the order, so only uniqueness holds there.
    many = [new_task_id() for _ in range(20_000)]
    assert len(set(many)) == len(many)
    stamps = [int(i.replace("-", "")[:12], 16) for i in many]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 60_000
