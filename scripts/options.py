"""Options and helpers shared by the command modules (scripts.cli, scripts.ops).

Kept apart from scripts.cli so a command module never imports the module that defines the group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from api.settings import default_db_path, is_database_url

DB_HELP = (
    "The ledger: a SQLite database file, or a postgresql://user@host:port/database URL "
    "(default ./taskledger.db, or $TASKLEDGER_DB)."
)

#: A file or a URL: what ``--db`` names.
Database = Path | str


class DatabaseParam(click.ParamType):
    """``--db``: a ``postgresql://`` URL stays a string; anything else is a file's path."""

    name = "file|url"

    def convert(self, value: Any, param: Any, ctx: Any) -> Database:
        if isinstance(value, Path) or is_database_url(value):
            return value
        text = str(value)
        if "://" in text:
            self.fail(
                f"{text!r} is neither a file nor a postgresql:// URL (only PostgreSQL "
                "databases are named by URL)",
                param,
                ctx,
            )
        if Path(text).is_dir():
            self.fail(f"{text!r} is a directory; give the database file's path", param, ctx)
        return Path(text)


def db_option(func: Any) -> Any:
    return click.option(
        "--db",
        "db_path",
        type=DatabaseParam(),
        default=None,
        help=DB_HELP,
    )(func)


def resolve_db(db_path: Database | None) -> Database:
    return db_path if db_path is not None else default_db_path()
