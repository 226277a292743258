"""Moving a SQLite ledger to PostgreSQL with the two documented commands:

    taskledger export --db old.db | taskledger import --db postgresql://...

then ``verify`` passes on the result, which holds the same events (same hashes), blobs, task
states and keys; served from PostgreSQL, the old keys read the same tasks."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from api.composition import Store
from tests.api.conftest import Ledger
from tests.inprocess import InProcessServer, add_key
from tests.pg import SESSION, needs_postgres

pytestmark = needs_postgres

ROOT = Path(__file__).resolve().parents[2]
TASKLEDGER = f"{shlex.quote(sys.executable)} -m scripts.cli"


def shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


@pytest.fixture
def url():
    made = SESSION.new_ledger_url()
    yield made
    SESSION.drop_schema(made)


@pytest.fixture
def server_story(tmp_path):
    """A SQLite ledger with a little of everything: created, claimed and succeeded, cancelled,
    deleted (its blobs purged), and two keys."""
    db = tmp_path / "old.db"
    keys = {"alice": add_key(db, "alice"), "admin": add_key(db, "admin", "admin")}
    with InProcessServer(db) as server, server.client(keys["alice"]) as alice:
        ledger = Ledger(db)
        try:
            made = []
            for name in ("done", "cancelled", "deleted", "queued"):
                response = alice.post(
                    "/task/parse", json={"file": "aGVsbG8=", "file_name": f"{name}.txt"}
                )
                assert response.status_code == 200, response.text
                made.append(response.json()["task_id"])
            done, cancelled, deleted, _queued = made
            ledger.succeed(done)
            ledger.succeed(deleted)
            assert alice.get(f"/task/{cancelled}/cancel").status_code == 200
            assert alice.delete(f"/task/{deleted}").status_code == 200
        finally:
            ledger.close()
    return db, keys


def test_export_piped_into_import_moves_a_sqlite_ledger_to_postgresql(server_story, url):
    db, keys = server_story

    moved = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert moved.returncode == 0, moved.stderr
    verified = shell(f"{TASKLEDGER} verify --db {shlex.quote(url)}")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert "hash chain intact" in verified.stdout + verified.stderr

    old, new = Store(db), Store(url)
    try:
        assert list(new.log.iter_stored()) == list(old.log.iter_stored())
        assert sorted(new.log.iter_blobs()) == sorted(old.log.iter_blobs())
        assert list(new.views.stored_states()) == list(old.views.stored_states())
        assert new.views.queue_entries() == old.views.queue_entries()
        assert sorted(new.records.list_keys(), key=lambda k: k.key_id) == sorted(
            old.records.list_keys(), key=lambda k: k.key_id
        )
        assert new.records.find_key(keys["alice"].split("_")[1]) == old.records.find_key(
            keys["alice"].split("_")[1]
        )
    finally:
        old.close()
        new.close()


def test_import_refuses_a_postgresql_ledger_that_already_has_events(server_story, url):
    db, _ = server_story
    first = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert first.returncode == 0, first.stderr
    store = Store(url)
    before = store.log.last_position()
    store.close()

    again = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )

    assert again.returncode != 0
    assert "already holds events" in again.stderr
    store = Store(url)
    try:
        assert store.log.last_position() == before
    finally:
        store.close()


def test_a_backup_of_a_postgresql_ledger_is_a_sqlite_file_that_verifies(
    server_story, url, tmp_path
):
    db, _ = server_story
    moved = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert moved.returncode == 0, moved.stderr
    copy = tmp_path / "copy.db"

    backed_up = shell(f"{TASKLEDGER} backup --db {shlex.quote(url)} {shlex.quote(str(copy))}")

    assert backed_up.returncode == 0, backed_up.stderr
    verified = shell(f"{TASKLEDGER} verify --db {shlex.quote(str(copy))}")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    old, new = Store(db), Store(copy)
    try:
        assert list(new.log.iter_stored()) == list(old.log.iter_stored())
        assert list(new.views.stored_states()) == list(old.views.stored_states())
    finally:
        old.close()
        new.close()
