"""Options and helpers shared by the command modules (scripts.cli, scripts.ops).

Kept apart from scripts.cli so a command module never imports the module that defines the group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from api.settings import default_db_path

DB_HELP = "SQLite database file (default ./taskledger.db, or $TASKLEDGER_DB)."


def db_option(func: Any) -> Any:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=DB_HELP,
    )(func)


def resolve_db(db_path: Path | None) -> Path:
    return db_path if db_path is not None else default_db_path()
