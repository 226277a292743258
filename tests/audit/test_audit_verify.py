"""``taskledger verify`` and ``taskledger rebuild``.

verify folds every stream again, compares the fold with the stored ``tasks`` rows, ``queue``
entries and ``feed`` entries, and recomputes the hash chain; it prints one JSON line per
difference (naming the task, and the position for a chain fault) and exits 1, or exits 0 on a
sound database. rebuild writes the projections again from the log.

The server keeps running: each corruption is made on a copy taken with ``taskledger backup``
(the copy holds the keys too, so it can be served). Last, ``taskledger backup`` while writers
keep appending: the copy is the database as of one moment, so it verifies, and its log is a
prefix of the live one.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_support import InProcessServer, Story, json_lines, query, served, taskledger, wait_for


@dataclass
class Tasks:
    story: Story
    succeeded: str
    cancelled: str
    deleted: str
    queued: str


@pytest.fixture(scope="module")
def known(tasks) -> Tasks:
    story = tasks.story()
    succeeded = tasks.succeed()["task_id"]
    cancelled = tasks.create()["task_id"]
    tasks.cancel(cancelled)
    deleted = tasks.succeed()["task_id"]
    tasks.delete(deleted)
    queued = tasks.create()["task_id"]  # last: it stays at the head of the queue
    return Tasks(story, succeeded, cancelled, deleted, queued)


@pytest.fixture(scope="module")
def pristine(known, server, tmp_path_factory) -> Path:
    """A consistent copy of the live database, made once with ``taskledger backup``."""
    destination = tmp_path_factory.mktemp("backup") / "pristine.db"
    result = taskledger("backup", str(destination), db=server.db)
    assert result.returncode == 0, result.stderr
    assert not destination.with_name("pristine.db-wal").exists()
    return destination


@pytest.fixture
def copy(pristine, tmp_path):
    """``copy()``: a file of its own holding the backup, for one test to corrupt."""

    def make(name: str = "copy.db") -> Path:
        destination = tmp_path / name
        shutil.copyfile(pristine, destination)
        return destination

    return make


def verify(db: Path) -> tuple[int, list[dict]]:
    result = taskledger("verify", db=db)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json_lines(result.stdout)


def edit(db: Path, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(str(db))
    try:
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()


def tampered_state(db: Path, task_id: str, **changes) -> str:
    (state,) = query(db, "SELECT state FROM tasks WHERE task_id = ?", task_id)[0]
    return json.dumps({**json.loads(state), **changes})


def position_of(db: Path, task_id: str, version: int) -> int:
    return query(
        db,
        "SELECT position FROM events WHERE stream_id = ? AND version = ?",
        f"task-{task_id}",
        version,
    )[0][0]


def event_data(db: Path, position: int) -> dict:
    return json.loads(query(db, "SELECT data FROM events WHERE position = ?", position)[0][0])


def alter_event(db: Path, position: int, data: str) -> None:
    """Rewrite an event's data, as someone with write access to the file could: the append-only
    trigger has to be dropped first."""
    edit(
        db,
        ("DROP TRIGGER events_no_update", ()),
        ("UPDATE events SET data = ? WHERE position = ?", (data, position)),
    )


def test_verify_passes_on_a_healthy_database(known, server):
    result = taskledger("verify", db=server.db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "OK" in result.stderr


def test_the_append_only_triggers_refuse_edits(copy):
    db = copy()
    for sql in ("UPDATE events SET data = '{}' WHERE position = 1", "DELETE FROM events"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            edit(db, (sql, ()))


def test_verify_names_the_task_whose_projection_row_was_corrupted(known, copy):
    db = copy()
    task_id = known.succeeded
    changed = tampered_state(db, task_id, message="Task cancelled", status="Cancelled")
    edit(db, ("UPDATE tasks SET state = ? WHERE task_id = ?", (changed, task_id)))

    code, differences = verify(db)
    assert code == 1
    assert [(d["kind"], d["task_id"]) for d in differences] == [("task", task_id)]
    assert "status" in differences[0]["detail"] and "message" in differences[0]["detail"]


def test_verify_names_a_task_with_no_projection_row_and_a_stale_queue(known, copy):
    db = copy()
    edit(
        db,
        ("DELETE FROM tasks WHERE task_id = ?", (known.cancelled,)),
        ("DELETE FROM queue WHERE task_id = ?", (known.queued,)),
    )
    code, differences = verify(db)
    assert code == 1
    assert sorted((d["kind"], d["task_id"]) for d in differences) == sorted(
        [("task", known.cancelled), ("queue", known.queued)]
    )


@pytest.mark.parametrize(
    ("version", "change", "fold_notices"),
    [
        # The worker named in the succeeded event: the fold forgets it, only the chain knows.
        (3, {"worker_id": "someone-else"}, False),
        # The file name given at creation: the fold differs from the stored row too.
        (1, {"file_name": "b.txt"}, True),
    ],
    ids=["invisible-to-the-fold", "visible-to-the-fold"],
)
def test_verify_names_the_position_of_an_altered_event(known, copy, version, change, fold_notices):
    db = copy()
    task_id = known.story.task_id
    position = position_of(db, task_id, version)
    data = event_data(db, position)
    alter_event(db, position, json.dumps({**data, **change}, separators=(",", ":")))

    code, differences = verify(db)
    assert code == 1
    chain = [d for d in differences if d["kind"] == "chain"]
    assert [(d["position"], d["task_id"]) for d in chain] == [(position, task_id)]
    assert str(position) in chain[0]["detail"]
    others = [(d["kind"], d["task_id"]) for d in differences if d["kind"] != "chain"]
    assert others == ([("task", task_id)] if fold_notices else [])


def test_verify_names_the_position_of_an_event_whose_data_was_replaced_by_garbage(known, copy):
    db = copy()
    position = position_of(db, known.cancelled, 2)
    alter_event(db, position, '{"type": "no_such_event"}')

    code, differences = verify(db)
    assert code == 1
    assert (
        "chain",
        position,
        known.cancelled,
    ) in [(d["kind"], d["position"], d["task_id"]) for d in differences]


def test_verify_names_the_task_whose_output_blob_was_altered(known, copy):
    db = copy()
    output = json.loads(tampered_state(db, known.succeeded))["output"]
    (data,) = query(db, "SELECT data FROM blobs WHERE sha256 = ?", output["sha256"])[0]
    altered = bytes(data).replace(b"hello, audit", b"HELLO, AUDIT")
    assert altered != bytes(data)
    edit(db, ("UPDATE blobs SET data = ? WHERE sha256 = ?", (altered, output["sha256"])))

    code, differences = verify(db)
    assert code == 1
    assert known.succeeded in [d["task_id"] for d in differences]


def test_verify_names_the_event_after_one_that_was_removed(known, copy):
    db = copy()
    task_id = known.story.task_id
    removed = position_of(db, task_id, 2)
    edit(
        db,
        ("DROP TRIGGER events_no_delete", ()),
        ("DELETE FROM events WHERE position = ?", (removed,)),
    )
    code, differences = verify(db)
    assert code == 1
    chain = [d for d in differences if d["kind"] == "chain"]
    assert [d["position"] for d in chain] == [removed + 1]
    assert ("task", task_id) in [(d["kind"], d["task_id"]) for d in differences]


def test_rebuild_restores_corrupted_projections_and_the_api_answers(
    known, copy, server, clients, user_keys
):
    db = copy()
    edit(
        db,
        (
            "UPDATE tasks SET state = ? WHERE task_id = ?",
            (tampered_state(db, known.succeeded, message="tampered"), known.succeeded),
        ),
        (
            "UPDATE tasks SET state = ? WHERE task_id = ?",
            (
                tampered_state(db, known.story.task_id, configuration={"target_chunk_length": 1}),
                known.story.task_id,
            ),
        ),
        ("DELETE FROM tasks WHERE task_id = ?", (known.cancelled,)),
        ("DELETE FROM queue", ()),
        ("DELETE FROM feed", ()),
    )
    assert verify(db)[0] == 1

    result = taskledger("rebuild", db=db)
    assert result.returncode == 0, result.stderr
    assert verify(db) == (0, [])

    alice = clients["alice"]
    ids = [known.story.task_id, known.succeeded, known.cancelled, known.queued]
    expected = {task_id: served(alice.get(f"/task/{task_id}"), server) for task_id in ids}
    expected_list = served(alice.get("/tasks", params={"include_chunks": True}), server)
    restored = InProcessServer(db).start()
    try:
        with restored.client(user_keys["alice"]) as again:
            for task_id in ids:
                assert served(again.get(f"/task/{task_id}"), restored) == expected[task_id]
            assert again.get(f"/task/{known.deleted}").status_code == 404
            assert served(again.get("/tasks", params={"include_chunks": True}), restored) == (
                expected_list
            )
            for task_id in ids:  # the feed was rebuilt: alice sees her tasks' events again
                events = again.get("/events", params={"task_id": task_id}).json()["events"]
                assert events == alice.get("/events", params={"task_id": task_id}).json()["events"]
                assert events
        with restored.client(user_keys["worker"]) as worker:
            claimed = worker.post("/worker/claim", json={"worker_id": "w-rebuilt"})
            assert claimed.status_code == 200, claimed.text
            assert claimed.json()["task_id"] == known.queued, "the queue was rebuilt"
    finally:
        restored.stop()


FEED = "SELECT owner, position, task_id, type FROM feed ORDER BY owner, position"


def test_rebuild_of_a_sound_database_changes_nothing(known, copy):
    db = copy()
    before = query(db, "SELECT task_id, state FROM tasks ORDER BY task_id")
    queue_before = query(db, "SELECT task_id, position FROM queue ORDER BY task_id")
    feed_before = query(db, FEED)
    result = taskledger("rebuild", db=db)
    assert result.returncode == 0, result.stderr
    assert query(db, "SELECT task_id, state FROM tasks ORDER BY task_id") == before
    assert query(db, "SELECT task_id, position FROM queue ORDER BY task_id") == queue_before
    assert query(db, FEED) == feed_before


def test_verify_names_each_task_whose_feed_entries_differ_and_rebuild_restores_them(known, copy):
    """A user's feed reads the ``feed`` table alone: an entry missing, a deleted task's history
    put back, or an entry moved to another owner would show the wrong events to someone."""
    db = copy()
    feed_before = query(db, FEED)
    created = position_of(db, known.deleted, 1)
    dropped = position_of(db, known.succeeded, 2)
    edit(
        db,
        ("DELETE FROM feed WHERE position = ?", (dropped,)),
        (
            "INSERT INTO feed (owner, position, task_id, type) VALUES (?, ?, ?, 'task_created')",
            ("alice", created, known.deleted),
        ),
        ("UPDATE feed SET owner = 'bob' WHERE task_id = ?", (known.cancelled,)),
        ("INSERT INTO feed VALUES ('alice', 999999, 'no-such-task', 'task_created')", ()),
    )
    code, differences = verify(db)
    assert code == 1
    found = {d["task_id"]: d["detail"] for d in differences}
    assert {d["kind"] for d in differences} == {"feed"}
    assert set(found) == {known.succeeded, known.deleted, known.cancelled, "no-such-task"}
    assert f"missing at positions [{dropped}]" in found[known.succeeded]
    assert f"not in the log's feed at positions [{created}]" in found[known.deleted]
    assert "owner='bob'" in found[known.cancelled]
    assert found["no-such-task"] == "feed entries without events"

    result = taskledger("rebuild", db=db)
    assert result.returncode == 0, result.stderr
    assert verify(db) == (0, [])
    assert query(db, FEED) == feed_before


# -- backup while the server takes writes ------------------------------------------------


def event_count(db) -> int:
    return query(db, "SELECT count(*) FROM events")[0][0]


def test_a_backup_taken_during_writes_verifies(burst, server, user_keys, tmp_path):
    writers = [user_keys["alice"], user_keys["bob"], user_keys["alice"], user_keys["bob"]]
    start = event_count(server.db)
    writes = burst(writers, user_keys["admin"], tasks_per_writer=None)
    wait_for(
        lambda: event_count(server.db) >= start + 100, timeout=30, what="the writers to get going"
    )

    destination = tmp_path / "backup.db"
    before = event_count(server.db)
    result = taskledger("backup", str(destination), db=server.db)
    after = event_count(server.db)
    writes.stop.set()
    writes.wait()
    assert result.returncode == 0, result.stderr
    assert after > before, "the server was taking writes while the backup ran"

    verified = taskledger("verify", db=destination)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    copied = query(destination, "SELECT position, hash FROM events ORDER BY position")
    assert len(copied) >= before
    live = query(server.db, "SELECT position, hash FROM events ORDER BY position")
    assert copied == live[: len(copied)], "the copy's log is a prefix of the live log"
    assert [p for p, _ in copied] == list(range(1, len(copied) + 1)), "no gaps in the copy"
    # The copy's projections are those of the same moment: every task in its log has a row.
    streams = query(destination, "SELECT count(DISTINCT stream_id) FROM events")[0][0]
    assert query(destination, "SELECT count(*) FROM tasks")[0][0] == streams

    live_verified = taskledger("verify", db=server.db)
    assert live_verified.returncode == 0, live_verified.stdout + live_verified.stderr


def test_backup_refuses_to_overwrite_a_file(server, tmp_path):
    destination = tmp_path / "taken.db"
    destination.write_bytes(b"precious")
    result = taskledger("backup", str(destination), db=server.db)
    assert result.returncode != 0
    assert "already exists" in result.stderr
    assert destination.read_bytes() == b"precious"


def test_verify_names_a_task_whose_query_columns_drifted_from_its_state(known, copy):
    """The list and sweeper queries read the row's columns, not its state: a column that no
    longer agrees (a process of an earlier version wrote the row, say) is a difference too."""
    db = copy()
    stale = "2000-01-01T00:00:00.000000Z"  # as if it had expired long ago
    edit(db, ("UPDATE tasks SET visible_until = ? WHERE task_id = ?", (stale, known.succeeded)))
    code, differences = verify(db)
    assert code == 1
    assert [(d["kind"], d["task_id"]) for d in differences] == [("task", known.succeeded)]
    assert "visible_until" in differences[0]["detail"]
