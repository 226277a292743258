"""Issue 14, item 12: secrets stay with the person who runs the server. The first admin key is
never written to stdout (which logs capture): with no terminal it goes to a 0600 file named on
stderr. The database (and its -wal/-shm files), a backup and an export are created 0600."""

from __future__ import annotations

import stat
import subprocess
import sys

import httpx

from tests.server import Server


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_admin_key_goes_to_a_private_file_not_to_stdout(tmp_path):
    db = tmp_path / "ledger.db"
    server = Server(db).start()
    try:
        key_file = tmp_path / "ledger.db.admin-key"
        assert mode(key_file) == 0o600
        key = key_file.read_text().strip()
        assert key.startswith("tlk_")
        response = httpx.get(f"{server.api}/tasks", headers={"Authorization": key})
        assert response.status_code == 200
        log = server.log_path.read_text()
        assert str(key_file) in log and key not in log
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            if (tmp_path / name).exists():
                assert mode(tmp_path / name) == 0o600, name
    finally:
        server.stop()
    # Nothing on stdout: the server's stdout was a pipe the test read nothing from.
    assert server.proc.stdout.read() in (b"", None)


def test_a_key_file_left_from_before_is_replaced_not_reused(tmp_path):
    db = tmp_path / "ledger.db"
    stale = tmp_path / "ledger.db.admin-key"
    stale.write_text("an old key\n")
    stale.chmod(0o644)
    server = Server(db).start()
    server.stop()
    assert mode(stale) == 0o600
    assert stale.read_text().startswith("tlk_")


def test_backups_and_exports_are_private(tmp_path):
    db = tmp_path / "ledger.db"
    server = Server(db).start()
    server.stop()
    for args in (
        ["backup", str(tmp_path / "copy.db")],
        ["export", "--output", str(tmp_path / "log.jsonl")],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "scripts.cli", *args, "--db", str(db)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "copy.db") == 0o600
    assert mode(tmp_path / "log.jsonl") == 0o600


def test_an_export_redirected_to_a_file_is_made_private(tmp_path):
    # ``taskledger export > file``: the shell creates the file with its umask (0644 here); the
    # export holds the webhooks' signing secrets, so the command makes it its owner's alone.
    db = tmp_path / "ledger.db"
    Server(db).start().stop()
    target = tmp_path / "redirected.jsonl"
    with open(target, "w") as out:
        target.chmod(0o644)
        result = subprocess.run(
            [sys.executable, "-m", "scripts.cli", "export", "--db", str(db)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert result.returncode == 0, result.stderr
    assert mode(target) == 0o600
    assert target.read_text().startswith('{"kind":"header"')
