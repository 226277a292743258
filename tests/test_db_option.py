"""``--db`` names a SQLite file or a PostgreSQL URL; anything else is refused with a message
before any database is touched."""

from __future__ import annotations

from click.testing import CliRunner

from scripts.cli import cli


def test_a_url_of_another_database_is_refused_with_a_message(tmp_path):
    result = CliRunner().invoke(cli, ["verify", "--db", "mysql://root@127.0.0.1/ledger"])
    assert result.exit_code == 2
    assert "neither a file nor a postgresql:// URL" in result.output


def test_a_directory_is_refused_with_a_message(tmp_path):
    result = CliRunner().invoke(cli, ["verify", "--db", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_postgresql_server_is_a_message_not_a_traceback():
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    result = CliRunner().invoke(cli, ["verify", "--db", "postgresql://nobody@127.0.0.1:1/ledger"])
    assert result.exit_code == 1
    assert "Cannot open postgresql://nobody@127.0.0.1:1/ledger" in result.output
    assert "Traceback" not in result.output
