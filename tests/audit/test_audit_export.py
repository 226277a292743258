"""``taskledger export`` then ``taskledger import``: the whole log (events with their envelopes
and hashes, blobs, the API keys' hashes) goes to JSON lines and comes back into a new database,
whose projections are built from it. Served, the new database answers the same keys as the old
one did, with the same answers. Import checks the hash
chain and refuses, writing nothing, a file that was altered, or a database that has events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_support import (
    InProcessServer,
    Story,
    feed_all,
    json_lines,
    query,
    served,
    taskledger,
)


@dataclass
class Known:
    story: Story
    succeeded: str
    failed_update: str
    cancelled: str
    deleted: str
    queued: str
    bobs: str


@pytest.fixture(scope="module")
def known(tasks, clients) -> Known:
    story = tasks.story()
    succeeded = tasks.succeed(expires_in=7200)["task_id"]
    # Succeeded, then an update that is claimed and failed: back to the first output.
    failed_update = tasks.succeed()["task_id"]
    response = clients["alice"].patch(
        f"/task/{failed_update}/parse", json={"high_resolution": False}
    )
    assert response.status_code == 200, response.text
    tasks.claim(failed_update)
    response = clients["worker"].post(
        f"/task/{failed_update}/fail", json={"worker_id": "w-audit", "error": "no luck"}
    )
    assert response.status_code == 200, response.text
    cancelled = tasks.create()["task_id"]
    tasks.cancel(cancelled)
    deleted = tasks.succeed()["task_id"]
    tasks.delete(deleted)
    bobs = tasks.create(clients["bob"])["task_id"]
    tasks.cancel(bobs, clients["bob"])
    queued = tasks.create(target_chunk_length=99)["task_id"]
    return Known(story, succeeded, failed_update, cancelled, deleted, queued, bobs)


@pytest.fixture(scope="module")
def exported(known, server, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "events.jsonl"
    with open(path, "w") as out:
        result = taskledger("export", db=server.db, stdout=out)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def imported(exported, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("imported") / "restored.db"
    result = taskledger("import", str(exported), db=db)
    assert result.returncode == 0, result.stderr
    return db


@pytest.fixture(scope="module")
def restored(imported, user_keys):
    """The imported database, served, and clients holding the original keys (an export carries
    the keys' hashes, so the same keys work)."""
    keys = {name: user_keys[name] for name in ("alice", "bob", "admin")}
    server = InProcessServer(imported).start()
    clients = {name: server.client(key) for name, key in keys.items()}
    yield server, clients
    for client in clients.values():
        client.close()
    server.stop()


def records(path: Path) -> list[dict]:
    return json_lines(path.read_text())


def test_export_writes_a_header_every_event_and_the_blobs(exported, server):
    lines = records(exported)
    assert lines[0] == {"kind": "header", "format": "taskledger-export", "version": 3}
    events = [r for r in lines if r["kind"] == "event"]
    stored = query(server.db, "SELECT position, hash FROM events ORDER BY position")
    assert [(e["position"], e["hash"]) for e in events] == stored
    blobs = {r["sha256"] for r in lines if r["kind"] == "blob"}
    assert blobs == {row[0] for row in query(server.db, "SELECT sha256 FROM blobs")}
    keys = [(r["key_id"], r["key_hash"]) for r in lines if r["kind"] == "key"]
    assert keys == query(server.db, "SELECT key_id, key_hash FROM api_keys ORDER BY key_id")
    assert lines[-1]["kind"] == "footer"


def test_an_export_holds_no_key_itself(exported, user_keys):
    text = exported.read_text()
    for key in user_keys.values():
        assert key not in text
        assert key.split("_", 2)[2] not in text


def test_the_imported_database_verifies(imported, exported):
    result = taskledger("verify", db=imported)
    assert result.returncode == 0, result.stdout + result.stderr
    events = [r for r in records(exported) if r["kind"] == "event"]
    assert query(imported, "SELECT count(*) FROM events")[0][0] == len(events)


def test_exporting_the_imported_database_gives_the_same_file(imported, exported, tmp_path):
    again = tmp_path / "again.jsonl"
    with open(again, "w") as out:
        result = taskledger("export", db=imported, stdout=out)
    assert result.returncode == 0, result.stderr
    assert again.read_text() == exported.read_text()


def test_the_imported_database_answers_as_the_original(known, restored, server, clients):
    new, new_clients = restored
    ids = [
        known.story.task_id,
        known.succeeded,
        known.failed_update,
        known.cancelled,
        known.queued,
    ]
    for name in ("alice", "admin"):
        old, again = clients[name], new_clients[name]
        for task_id in ids:
            before = served(old.get(f"/task/{task_id}"), server)
            assert served(again.get(f"/task/{task_id}"), new) == before, (name, task_id)
            versions = len(old.get(f"/task/{task_id}/events").json())
            for version in range(1, versions + 1):
                path, params = f"/task/{task_id}", {"as_of_version": version}
                assert served(again.get(path, params=params), new) == served(
                    old.get(path, params=params), server
                )
        for params in ({}, {"include_chunks": True}, {"page": 1, "limit": 2}):
            assert served(again.get("/tasks", params=params), new) == served(
                old.get("/tasks", params=params), server
            ), (name, params)
        assert feed_all(again) == feed_all(old), name

    succeeded = served(new_clients["alice"].get(f"/task/{known.succeeded}"), new)
    assert succeeded["status"] == "Succeeded"
    assert len(succeeded["output"]["chunks"]) == 1
    assert succeeded["output"]["chunks"][0]["segments"][0]["content"] == "hello, audit"
    assert new_clients["bob"].get(f"/task/{known.story.task_id}").status_code == 404
    assert new_clients["bob"].get(f"/task/{known.bobs}").status_code == 200


def test_the_imported_history_is_the_original_history(known, restored, server, clients):
    new, new_clients = restored
    for task_id in (known.story.task_id, known.failed_update, known.deleted, known.bobs):
        old = clients["admin"].get(f"/task/{task_id}/events")
        assert old.status_code == 200
        assert served(new_clients["admin"].get(f"/task/{task_id}/events"), new) == old.json()
    assert new_clients["alice"].get(f"/task/{known.deleted}/events").status_code == 404
    assert new_clients["alice"].get(f"/task/{known.deleted}").status_code == 404


def test_the_imported_database_takes_new_events_on_the_same_chain(known, restored, imported):
    new, new_clients = restored
    last = query(imported, "SELECT max(position) FROM events")[0][0]
    claimed = new_clients["admin"].post("/worker/claim", json={"worker_id": "w-after-import"})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["task_id"] == known.queued, "the queue came back with the log"
    events = new_clients["admin"].get(f"/task/{known.queued}/events").json()
    assert [(e["type"], e["position"]) for e in events][-1] == ("claimed", last + 1)
    result = taskledger("verify", db=imported)
    assert result.returncode == 0, result.stdout + result.stderr


def broken(exported: Path, tmp_path: Path, field: str, value) -> tuple[Path, int]:
    """The export with one field of one event (in the middle of the log) changed."""
    lines = exported.read_text().splitlines()
    numbers = [n for n, line in enumerate(lines) if json.loads(line)["kind"] == "event"]
    number = numbers[len(numbers) // 2]
    record = json.loads(lines[number])
    record[field] = value(record[field])
    lines[number] = json.dumps(record, separators=(",", ":"))
    path = tmp_path / f"broken-{field}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, record["position"]


def with_data(data: str) -> str:
    event = json.loads(data)
    event["at"] = "2020-01-01T00:00:00Z"
    return json.dumps(event, separators=(",", ":"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("data", with_data),
        ("recorded_at", lambda _: "2020-01-01T00:00:00.000000Z"),
        ("actor_role", lambda role: "admin" if role != "admin" else "user"),
    ],
)
def test_import_refuses_an_export_whose_chain_is_broken(exported, tmp_path, field, value):
    path, position = broken(exported, tmp_path, field, value)
    db = tmp_path / "new.db"
    result = taskledger("import", str(path), db=db)
    assert result.returncode != 0
    assert "Hash chain broken" in result.stderr and str(position) in result.stderr
    if db.exists():
        for table in ("events", "blobs", "tasks", "queue"):
            assert query(db, f"SELECT count(*) FROM {table}")[0][0] == 0, table


def test_import_refuses_a_database_that_already_has_events(exported, imported):
    before = query(imported, "SELECT count(*), max(position) FROM events")
    tasks_before = query(imported, "SELECT task_id, state FROM tasks ORDER BY task_id")
    result = taskledger("import", str(exported), db=imported)
    assert result.returncode != 0
    assert "already holds events" in result.stderr
    assert query(imported, "SELECT count(*), max(position) FROM events") == before
    assert query(imported, "SELECT task_id, state FROM tasks ORDER BY task_id") == tasks_before
