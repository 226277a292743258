"""``taskledger keys`` against the database a live server uses, and the help of every command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import pytest

from scripts.cli import cli as cli_group

KEY = re.compile(r"^tlk_([0-9a-f]{12})_[A-Za-z0-9_-]+$")


@pytest.fixture(scope="module")
def server(real_server):
    """``taskledger keys`` processes and a live ``taskledger serve`` process on one database
    (and the server's own log file is searched for keys): a real server."""
    return real_server


def taskledger(
    *args: str, db: Path | str | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    extra = ["--db", str(db)] if db is not None else []
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args, *extra],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def new_key(db: Path | str, owner: str, role: str = "user") -> tuple[str, str]:
    """(key, key id) from ``keys create``: the key is alone on the last stdout line."""
    out = taskledger("keys", "create", "--owner", owner, "--role", role, db=db).stdout
    last = out.rstrip("\n").splitlines()[-1]
    match = KEY.match(last)
    assert match, f"last stdout line is not a key: {last!r}"
    return last, match.group(1)


def listed(db: Path | str) -> tuple[str, list[dict]]:
    result = taskledger("keys", "list", db=db)
    text = result.stdout + result.stderr
    return text, [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_keys_create_prints_a_working_key_on_the_last_line(server):
    result = taskledger("keys", "create", "--owner", "dora", "--role", "user", db=server.db)
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines, result.stderr
    assert KEY.match(lines[-1]), lines
    key_id = KEY.match(lines[-1]).group(1)
    assert key_id in result.stderr  # the id is told, on stderr
    with server.client(lines[-1]) as client:
        assert client.get("/tasks").status_code == 200


def test_keys_create_refuses_an_unknown_role(server):
    result = taskledger(
        "keys", "create", "--owner", "x", "--role", "root", db=server.db, check=False
    )
    assert result.returncode != 0
    assert "role" in result.stderr
    assert not any(KEY.match(line) for line in result.stdout.splitlines())


def test_keys_list_shows_ids_owners_roles_but_never_keys(server):
    key, key_id = new_key(server.db, "erin", "worker")
    text, records = listed(server.db)
    secret = key.split("_", 2)[2]
    assert key not in text
    assert secret not in text
    (record,) = [r for r in records if r["key_id"] == key_id]
    assert (record["owner"], record["role"], record["revoked_at"]) == ("erin", "worker", None)
    assert all("key" not in field or field == "key_id" for r in records for field in r)


def test_keys_revoke_makes_the_key_401_within_the_cache_time(server):
    key, key_id = new_key(server.db, "frank")
    with server.client(key) as client:
        assert client.get("/tasks").status_code == 200  # now in the server's key cache
        result = taskledger("keys", "revoke", key_id, db=server.db)
        assert key_id in result.stdout
        revoked_at = time.monotonic()
        while True:
            response = client.get("/tasks")
            if response.status_code == 401:
                break
            assert response.status_code == 200
            assert time.monotonic() - revoked_at < 3.5, "revoked key still accepted after 3.5 s"
            time.sleep(0.1)
        assert response.text == "Invalid or inactive API key"
        assert client.post("/task/parse", json={"file": "aGk="}).status_code == 401
    (record,) = [r for r in listed(server.db)[1] if r["key_id"] == key_id]
    assert record["revoked_at"] is not None
    again = taskledger("keys", "revoke", key_id, db=server.db, check=False)
    assert again.returncode != 0
    assert "No active key" in again.stderr


def test_revoking_one_key_leaves_the_others(server):
    keep, _ = new_key(server.db, "gina")
    drop, drop_id = new_key(server.db, "gina")
    taskledger("keys", "revoke", drop_id, db=server.db)
    with server.client(keep) as client:
        assert client.get("/tasks").status_code == 200


def test_no_plaintext_key_in_the_database_or_the_log(server, ledger):
    key, key_id = new_key(server.db, "hank")
    with server.client(key) as client:
        created = client.post(
            "/task/parse",
            json={"file": "aGk=", "file_name": "h.txt"},
            headers={"Idempotency-Key": "h1"},
        )
        assert created.status_code == 200
        client.get(f"/task/{created.json()['task_id']}/cancel")
    secret = key.split("_", 2)[2].encode()
    # Every value of every table, on either backend.
    for table in ledger.tables():
        for row in ledger.query(f"SELECT * FROM {table}"):
            for value in row:
                data = value if isinstance(value, bytes) else str(value).encode()
                assert key.encode() not in data, table
                assert secret not in data, table
    if isinstance(server.db, Path):
        # And a SQLite file byte for byte, with its WAL (freed pages and frames too).
        files = [server.db, server.db.with_name(server.db.name + "-wal")]
        seen = [path for path in files if path.exists()]
        assert server.db in seen
        for path in seen:
            data = path.read_bytes()
            assert key.encode() not in data, path
            assert secret not in data, path
    # The key id (not secret) is what the log records as the actor.
    rows = ledger.query("SELECT count(*) FROM events WHERE actor_key_id = ?", key_id)
    assert rows == [(2,)]
    assert key not in server.log_path.read_text(errors="replace")


def test_unauthenticated_health_still_answers_after_key_changes(server):
    assert httpx.get(f"{server.url}/health").status_code == 200


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            found += commands(command, path)
        else:
            found.append(path)
    return found


COMMANDS = commands(cli_group)


def test_the_commands_are_found():
    assert {("serve",), ("keys", "create"), ("keys", "list"), ("keys", "revoke")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example(path):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli_group, [*path, "--help"], prog_name="taskledger")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    example = result.output.split("Example:", 1)[1]
    assert f"taskledger {' '.join(path)}" in example
