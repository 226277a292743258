"""Every operator command is there when the command line runs as ``python -m scripts.cli``
(the form these tests use), and each says how to use it."""

from __future__ import annotations

import pytest
from audit_support import taskledger

OPERATOR_COMMANDS = ("replay", "history", "tail", "verify", "rebuild", "export", "import", "backup")


def test_python_dash_m_scripts_cli_lists_every_operator_command():
    result = taskledger("--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(OPERATOR_COMMANDS) <= listed


@pytest.mark.parametrize("command", ["verify", "replay"])
def test_an_operator_command_needs_an_existing_database(command, tmp_path):
    args = [command] if command == "verify" else [command, "00000000-0000-0000-0000-000000000000"]
    missing = tmp_path / "missing.db"
    result = taskledger(*args, db=missing)
    assert result.returncode != 0
    assert "No database" in result.stderr
    assert not missing.exists(), "a read-only command must not create a database"
