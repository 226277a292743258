"""Issue 14, item 10: ``taskledger verify`` compares the columns the queries read (owner,
lease_until, visible_until, ...) and the queue with the state folded from the log. An edited
``owner`` moves a task into another user's list; an edited ``lease_until`` keeps an expired lease
from being re-queued; a dropped queue row hides a task from every claim. Each is a difference
that names the task and the column, and ``rebuild`` puts it right."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from scripts.cli import cli
from tests.inprocess import InProcessServer, add_key


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def differences(db) -> list[dict]:
    code, output = run("verify", "--db", str(db))
    assert code in (0, 1), output
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def ledger(tmp_path):
    server = InProcessServer(tmp_path / "ledger.db", sweep_interval=0).start()
    alice = server.client(add_key(server.db, "alice"))
    bob = server.client(add_key(server.db, "bob"))
    worker = server.client(add_key(server.db, "pool", "worker"))
    ids = [alice.post("/task/parse", json={"file": "aGk="}).json()["task_id"] for _ in range(3)]
    claimed = worker.post("/worker/claim", json={"worker_id": "w", "lease_seconds": 60}).json()
    yield server, alice, bob, ids, claimed["task_id"]
    for client in (alice, bob, worker):
        client.close()
    server.stop()


def edit(db, sql: str, *params: object) -> None:
    with sqlite3.connect(db) as connection:
        assert connection.execute(sql, params).rowcount == 1


def test_an_edited_owner_column_is_named_by_verify(ledger):
    server, alice, bob, ids, _ = ledger
    moved = ids[1]
    edit(server.db, "UPDATE tasks SET owner = 'bob' WHERE task_id = ?", moved)
    # the edit really moved it: bob's list has it now
    assert moved in {t["task_id"] for t in bob.get("/tasks").json()}
    server.stop()
    found = differences(server.db)
    assert [(d["kind"], d["task_id"]) for d in found] == [("task", moved)]
    assert "owner is 'bob', its state says 'alice'" in found[0]["detail"]
    assert run("rebuild", "--db", str(server.db))[0] == 0
    assert differences(server.db) == []


def test_an_edited_lease_and_a_dropped_queue_row_are_named_by_verify(ledger):
    server, alice, bob, ids, claimed = ledger
    edit(server.db, "UPDATE tasks SET lease_until = NULL WHERE task_id = ?", claimed)
    waiting = next(t for t in ids if t != claimed)
    edit(server.db, "DELETE FROM queue WHERE task_id = ?", waiting)
    server.stop()
    found = {(d["kind"], d["task_id"]): d["detail"] for d in differences(server.db)}
    assert set(found) == {("task", claimed), ("queue", waiting)}
    assert "lease_until is None" in found["task", claimed]
    assert "queue position is None" in found["queue", waiting]
