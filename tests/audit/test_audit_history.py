"""A task's history and time travel, told as one story: alice creates a task, a worker claims
and completes it, alice asks for an update (target_length 7) and then cancels the update, which
puts the task back exactly as it was after it succeeded.

    GET /api/v1/task/{id}/events            every event, oldest first, with its envelope
    GET /api/v1/task/{id}?as_of_version=N   the task after its N-th event
    GET /api/v1/task/{id}?as_of=<RFC 3339>  the task as it was at that time

Then the same story through the operator commands: replay, history, tail.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from datetime import timedelta

import pytest
from audit_support import (
    ROOT,
    TASKLEDGER,
    feed_all,
    json_lines,
    key_id,
    query,
    rfc3339,
    taskledger,
    unsigned,
    wait_for,
    when,
)

from api.output import check_output

STORY_TYPES = ["task_created", "claimed", "succeeded", "update_requested", "cancelled"]
#: What the cancel of the update must restore, field for field.
RESTORED_FIELDS = (
    "status",
    "message",
    "configuration",
    "output",
    "started_at",
    "finished_at",
    "expires_at",
)


@pytest.fixture(scope="module")
def story(tasks):
    return tasks.story()


@pytest.fixture(scope="module")
def events(story, clients):
    response = clients["alice"].get(f"/task/{story.task_id}/events")
    assert response.status_code == 200, response.text
    return response.json()


def as_of_version(client, task_id, version):
    return client.get(f"/task/{task_id}", params={"as_of_version": version})


def as_of(client, task_id, moment: str):
    return client.get(f"/task/{task_id}", params={"as_of": moment})


# -- GET /task/{id}/events ----------------------------------------------------------------------


def test_history_lists_the_five_events_of_the_story_in_order(story, events):
    assert [e["type"] for e in events] == STORY_TYPES
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5]
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions)), "positions must strictly increase"
    assert all(e["task_id"] == story.task_id for e in events)
    recorded = [when(e["recorded_at"]) for e in events]
    assert all(r.tzinfo is not None for r in recorded)
    assert recorded == sorted(set(recorded)), "recorded_at must increase with the version"
    assert all(e["request_id"] for e in events), "every HTTP command records its request id"
    assert all(len(e["hash"]) == 64 for e in events)
    assert len({e["hash"] for e in events}) == 5


def test_history_names_who_did_each_step(events, user_keys):
    alice, worker = key_id(user_keys["alice"]), key_id(user_keys["worker"])
    assert [(e["actor"]["role"], e["actor"]["key_id"]) for e in events] == [
        ("user", alice),
        ("worker", worker),
        ("worker", worker),
        ("user", alice),
        ("user", alice),
    ]


def test_history_carries_each_events_data(story, events):
    created, claimed, succeeded, updated, cancelled = (e["data"] for e in events)
    assert created["owner"] == "alice"
    assert created["file_name"] == "a.txt"
    assert created["expires_in"] == 3600
    # The event records the configuration fields sent (the rest are Chunkr's defaults).
    assert created["configuration"] == {"expires_in": 3600}
    assert claimed["worker_id"] == "w-audit" and claimed["attempt"] == 1
    assert succeeded["worker_id"] == "w-audit"
    assert len(succeeded["output"]["sha256"]) == 64
    # The update's chunk_processing, whole, with its own defaults; expires_in kept.
    assert updated["configuration"] == {
        "expires_in": 3600,
        "chunk_processing": {
            "ignore_headers_and_footers": True,
            "target_length": 7,
            "tokenizer": {"Enum": "Word"},
        },
    }
    assert cancelled["at"] >= updated["at"]


def test_admin_sees_the_same_history_as_the_owner(story, events, clients):
    response = clients["admin"].get(f"/task/{story.task_id}/events")
    assert response.status_code == 200, response.text
    assert response.json() == events


def test_the_feed_filtered_by_task_is_the_same_history(story, events, clients):
    response = clients["alice"].get("/events", params={"task_id": story.task_id})
    assert response.status_code == 200, response.text
    assert response.json()["events"] == events
    assert response.json()["next_after"] == events[-1]["position"]


# -- as_of_version ------------------------------------------------------------------------------


def test_every_version_is_the_state_after_that_event(story, events, clients):
    alice = clients["alice"]
    states = {}
    for version in range(1, 6):
        response = as_of_version(alice, story.task_id, version)
        assert response.status_code == 200, (version, response.text)
        states[version] = response.json()
    v1, v2, v3, v4, v5 = (states[v] for v in range(1, 6))

    assert (v1["status"], v1["message"]) == ("Starting", "Task queued")
    assert (v1["started_at"], v1["finished_at"], v1["expires_at"]) == (None, None, None)
    assert v1["configuration"]["chunk_processing"]["target_length"] == 512

    assert (v2["status"], v2["message"]) == ("Processing", "Task started")
    assert v2["started_at"] is not None and v2["finished_at"] is None

    assert (v3["status"], v3["message"]) == ("Succeeded", "Task succeeded")
    assert v3["started_at"] == v2["started_at"]
    assert v3["finished_at"] is not None
    assert when(v3["expires_at"]) == when(v3["finished_at"]) + timedelta(seconds=3600)
    # What complete stored: the output sent, in its normal form (api/output.py).
    assert v3["output"]["chunks"] == check_output(story.output, None)["chunks"]
    assert v3["output"]["page_count"] == 1

    assert (v4["status"], v4["message"]) == ("Starting", "Task queued for update")
    chunking = v4["configuration"]["chunk_processing"]
    assert chunking["target_length"] == 7
    assert chunking["tokenizer"] == v3["configuration"]["chunk_processing"]["tokenizer"]
    assert chunking["ignore_headers_and_footers"] is True

    # Cancelling the update is a revert: version 5 is version 3 again.
    for name in RESTORED_FIELDS:
        assert v5[name] == v3[name], name
    assert v5["configuration"]["chunk_processing"]["target_length"] == 512


def test_each_version_is_what_the_api_answered_at_the_time(story, clients):
    alice = clients["alice"]

    def apart(task: dict) -> tuple[dict, str]:
        """The answer and its input_file_url, the link's signature blanked: a link is signed
        for its answer's moment, and a worker's answers carry the authenticated input route
        instead of a link."""
        task = unsigned(task)
        return task, task["configuration"].pop("input_file_url")

    def version(n: int) -> tuple[dict, str]:
        return apart(as_of_version(alice, story.task_id, n).json())

    created, link = apart(story.created)
    assert version(1) == (created, link)
    for n, told in ((2, story.claimed), (3, story.succeeded)):
        got, got_link = version(n)
        expected, worker_link = apart(told)
        assert (got_link, worker_link) == (link, f"{story.created['task_url']}/input")
        if n == 2:  # a claim's answer has the lease besides
            expected = {k: v for k, v in expected.items() if k in got}
        assert got == expected, n
    assert version(4) == apart(story.updated)
    current = alice.get(f"/task/{story.task_id}").json()
    assert version(5) == apart(current)


@pytest.mark.parametrize("version", [0, 6])
def test_a_version_the_task_never_had_is_refused(story, clients, version):
    response = as_of_version(clients["alice"], story.task_id, version)
    assert response.status_code == 400, response.text


# -- as_of ----------------------------------------------------------------------------------


def test_as_of_between_two_events_is_the_state_after_the_earlier(story, events, clients):
    alice = clients["alice"]
    recorded = [when(e["recorded_at"]) for e in events]
    for version, (earlier, later) in enumerate(zip(recorded, recorded[1:], strict=False), start=1):
        middle = earlier + (later - earlier) / 2
        assert earlier < middle < later
        response = as_of(alice, story.task_id, rfc3339(middle))
        assert response.status_code == 200, (version, response.text)
        assert response.json() == as_of_version(alice, story.task_id, version).json(), version


def test_as_of_the_instant_an_event_was_recorded_includes_it(story, events, clients):
    alice = clients["alice"]
    for event in events:
        response = as_of(alice, story.task_id, event["recorded_at"])
        assert response.status_code == 200, response.text
        assert response.json() == as_of_version(alice, story.task_id, event["version"]).json()


def test_as_of_after_the_last_event_is_the_current_task(story, events, clients):
    alice = clients["alice"]
    later = (when(events[-1]["recorded_at"]) + timedelta(hours=1)).isoformat()  # +00:00 form
    response = as_of(alice, story.task_id, later)
    assert response.status_code == 200, response.text
    assert response.json() == alice.get(f"/task/{story.task_id}").json()


def test_as_of_before_the_task_was_created_is_not_found(story, events, clients):
    before = when(events[0]["recorded_at"]) - timedelta(microseconds=1)
    response = as_of(clients["alice"], story.task_id, rfc3339(before))
    assert response.status_code == 404, response.text
    assert response.text.startswith("Task not found")


def test_as_of_without_a_time_zone_is_refused(story, events, clients):
    naive = events[2]["recorded_at"].replace("Z", "")
    response = as_of(clients["alice"], story.task_id, naive)
    assert response.status_code == 400, response.text


# -- who may look -------------------------------------------------------------------------------


def test_another_owner_sees_nothing_of_the_task(story, events, clients):
    bob = clients["bob"]
    for response in (
        bob.get(f"/task/{story.task_id}/events"),
        as_of_version(bob, story.task_id, 3),
        as_of(bob, story.task_id, events[2]["recorded_at"]),
        bob.get(f"/task/{story.task_id}"),
    ):
        assert response.status_code == 404, response.text
        assert response.text == "Task not found"
    response = bob.get("/events", params={"task_id": story.task_id})
    assert response.status_code == 200
    assert response.json()["events"] == []


def test_an_admin_audits_a_deleted_task_its_owner_no_longer_sees(tasks, clients):
    alice, admin, bob = clients["alice"], clients["admin"], clients["bob"]
    task_id = tasks.create()["task_id"]
    tasks.cancel(task_id)
    tasks.delete(task_id)

    for client in (alice, bob):
        assert client.get(f"/task/{task_id}/events").status_code == 404
        assert as_of_version(client, task_id, 1).status_code == 404
    assert admin.get(f"/task/{task_id}").status_code == 404, "a deleted task is gone for reads"

    response = admin.get(f"/task/{task_id}/events")
    assert response.status_code == 200, response.text
    history = response.json()
    assert [e["type"] for e in history] == ["task_created", "cancelled", "deleted"]
    assert [e["version"] for e in history] == [1, 2, 3]
    assert {e["actor"]["role"] for e in history} == {"user"}

    response = as_of_version(admin, task_id, 2)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert (cancelled["status"], cancelled["message"]) == ("Cancelled", "Task cancelled")
    response = as_of(admin, task_id, history[0]["recorded_at"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "Starting"


def test_an_admin_audits_an_expired_task_its_owner_no_longer_sees(tasks, clients):
    alice, admin = clients["alice"], clients["admin"]
    task_id = tasks.succeed(expires_in=1)["task_id"]

    def expired_history():
        history = admin.get(f"/task/{task_id}/events").json()
        return history if history[-1]["type"] == "expired" else None

    # The server's sweeper (every second) records the expiry.
    history = wait_for(expired_history, timeout=30, what="the sweeper to expire the task")
    assert [e["type"] for e in history] == ["task_created", "claimed", "succeeded", "expired"]
    assert history[-1]["actor"] == {"key_id": None, "role": "system"}

    assert alice.get(f"/task/{task_id}").status_code == 404
    assert alice.get(f"/task/{task_id}/events").status_code == 404
    assert as_of_version(alice, task_id, 3).status_code == 404
    response = as_of_version(admin, task_id, 3)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "Succeeded"


# -- the operator commands: replay, history, tail --------------------------------------------


@pytest.fixture(scope="module")
def replayed(story, server):
    result = taskledger("replay", story.task_id, db=server.db)
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)


def test_replay_prints_one_json_line_per_event_with_the_state_after_it(replayed, events):
    assert [r["type"] for r in replayed] == STORY_TYPES
    assert [r["version"] for r in replayed] == [1, 2, 3, 4, 5]
    assert [r["position"] for r in replayed] == [e["position"] for e in events]
    assert [r["state"]["version"] for r in replayed] == [1, 2, 3, 4, 5]
    assert [r["state"]["status"] for r in replayed] == [
        "Starting",
        "Processing",
        "Succeeded",
        "Starting",
        "Succeeded",
    ]
    assert replayed[3]["state"]["configuration"]["chunk_processing"]["target_length"] == 7
    assert replayed[3]["state"]["prior"]["status"] == "Succeeded"


def test_replay_shows_the_cancel_restoring_the_state_after_the_succeed(replayed):
    after_succeed, after_cancel = replayed[2]["state"], replayed[4]["state"]
    assert after_succeed["output"] is not None and after_succeed["expires_at"] is not None
    for name in RESTORED_FIELDS:
        assert after_cancel[name] == after_succeed[name], name
    assert after_cancel["prior"] is None
    assert after_cancel["configuration"] != replayed[3]["state"]["configuration"]


def test_replay_until_a_version_stops_after_it(story, server, replayed):
    result = taskledger("replay", story.task_id, "--until", "3", db=server.db)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [r["version"] for r in lines] == [1, 2, 3]
    assert lines == replayed[:3]


def test_replay_until_a_time_stops_at_the_last_event_before_it(story, server, events, replayed):
    third, fourth = when(events[2]["recorded_at"]), when(events[3]["recorded_at"])
    middle = third + (fourth - third) / 2
    result = taskledger("replay", story.task_id, "--until", rfc3339(middle), db=server.db)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [r["version"] for r in lines] == [1, 2, 3]
    assert lines[-1]["state"] == replayed[2]["state"]


def test_replay_of_an_unknown_task_fails(server):
    result = taskledger("replay", "00000000-0000-0000-0000-000000000000", db=server.db)
    assert result.returncode != 0
    assert result.stdout == ""


def test_history_command_prints_the_events_as_json_lines(story, server, events):
    result = taskledger("history", story.task_id, db=server.db)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=False):
        assert (line["position"], line["version"], line["type"], line["task_id"]) == (
            event["position"],
            event["version"],
            event["type"],
            event["task_id"],
        )
        assert line["actor"] == event["actor"]
        assert line["request_id"] == event["request_id"]
        assert when(line["recorded_at"]) == when(event["recorded_at"])
        assert line["data"] == {k: v for k, v in event["data"].items() if k != "task_id"}


def test_tail_prints_the_newest_events_of_the_whole_log(story, server, events, clients):
    feed = feed_all(clients["admin"])
    result = taskledger("tail", db=server.db)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [line["position"] for line in lines] == [e["position"] for e in feed[-20:]]
    assert [line["type"] for line in lines] == [e["type"] for e in feed[-20:]]

    result = taskledger("tail", "--after", str(events[0]["position"] - 1), db=server.db)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    story_lines = [line for line in lines if line["task_id"] == story.task_id]
    assert [line["type"] for line in story_lines] == STORY_TYPES
    assert lines[0]["position"] == events[0]["position"]


def test_tail_follow_prints_events_appended_after_it_started(server, tasks, clients):
    last = query(server.db, "SELECT coalesce(max(position), 0) FROM events")[0][0]
    process = subprocess.Popen(
        [*TASKLEDGER, "tail", "--follow", "--after", str(last), "--db", str(server.db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    )
    reader.start()
    try:
        task_id = tasks.create()["task_id"]
        tasks.cancel(task_id)
        seen = []
        while len(seen) < 2:
            try:
                seen.append(json_lines(lines.get(timeout=30))[0])
            except queue.Empty:
                pytest.fail(f"tail --follow printed {seen} and then nothing for 30 s")
        assert [(s["task_id"], s["type"], s["version"]) for s in seen] == [
            (task_id, "task_created", 1),
            (task_id, "cancelled", 2),
        ]
        assert seen[0]["position"] == last + 1 and seen[1]["position"] == last + 2
        assert process.poll() is None, "--follow keeps running"
    finally:
        process.terminate()
        process.wait(10)
