"""The README and the command line agree (sqlite-utils' test_docs habit)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from scripts.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found += all_commands(command, f"{full} ")
        else:
            found.append((full, command))
    return found


COMMANDS = all_commands(cli)


EVERY_COMMAND = [
    "backup",
    "bench",
    "export",
    "history",
    "import",
    "keys",
    "rebuild",
    "replay",
    "serve",
    "tail",
    "verify",
    "webhooks",
    "worker",
]


def fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_group_alone_gives_every_command():
    # Every command is registered where the group is defined (datasette's habit): nothing else
    # has to be imported first for its side effect.
    out = fresh_python("from scripts.cli import cli; print(sorted(cli.commands))")
    assert out.strip() == repr(EVERY_COMMAND)


def test_the_command_modules_do_not_import_the_group():
    # No import cycle: scripts.ops (and the options it shares with scripts.cli) stand alone.
    out = fresh_python(
        "import sys, scripts.ops, scripts.options, scripts.bench;"
        " print('scripts.cli' in sys.modules)"
    )
    assert out.strip() == "False"


def test_the_command_line_has_the_commands_the_issues_ask_for():
    names = {name for name, _ in COMMANDS}
    assert {
        "serve",
        "keys create",
        "keys list",
        "keys revoke",
        "worker",
        "replay",
        "history",
        "tail",
        "verify",
        "rebuild",
        "export",
        "import",
        "backup",
        "webhooks list",
        "webhooks deliveries",
        "webhooks retry",
    } <= names


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_help_with_an_example(name, command):
    result = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS])
def test_every_command_is_in_the_readme(name):
    assert f"taskledger {name}" in README


def test_the_readme_has_exactly_the_two_setup_commands_and_ci_runs_the_test_one():
    blocks = re.findall(
        r"```\n(.*?)\n```", README.split("## Set up", 1)[1].split("\n## ", 1)[0], re.S
    )
    assert blocks == [
        "pip install . && taskledger serve",
        "pip install -e '.[test]' && python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci.splitlines()
