"""PostgreSQL for the tests: ``TASKLEDGER_TEST_PG`` names a server (CI sets it to
``postgresql://postgres@127.0.0.1:5432/postgres``). With it set, each test session works in a
database of its own, created on first use and dropped when the session ends, and each ledger a
test asks for (``new_ledger_url``) is a fresh schema in it; a server that cannot be reached
fails those tests. Without it, the PostgreSQL tests are skipped with a message naming it."""

from __future__ import annotations

import itertools
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

PG_ENV = "TASKLEDGER_TEST_PG"
SKIP_REASON = (
    f"PostgreSQL tests need a server: set {PG_ENV}=postgresql://user@host:port/database "
    "(a database the user may create others from)"
)


def server_url() -> str | None:
    return os.environ.get(PG_ENV) or None


needs_postgres = pytest.mark.skipif(server_url() is None, reason=SKIP_REASON)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema`` (libpq's ``options`` parameter)."""
    option = "options=" + quote(f"-csearch_path={schema}", safe="")
    return url + ("&" if "?" in url else "?") + option


class SessionDatabase:
    """The session's own database, made on first use."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.url: str | None = None
        self._schemas = itertools.count(1)
        self._made: dict[str, str] = {}

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        url = server_url()
        if url is None:
            pytest.skip(SKIP_REASON)
        return psycopg.connect(url, autocommit=True)

    def ensure(self) -> str:
        if self.url is None:
            name = f"taskledger_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            with self._admin() as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.name = name
            self.url = _with_database(server_url() or "", name)
        return self.url

    def new_ledger_url(self) -> str:
        """A URL whose search_path is a new, empty schema of the session's database."""
        import psycopg

        url = self.ensure()
        schema = f"ledger_{next(self._schemas)}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        ledger_url = with_schema(url, schema)
        self._made[ledger_url] = schema
        return ledger_url

    def drop_schema(self, ledger_url: str) -> None:
        """Drop the schema of a URL ``new_ledger_url`` gave (and everything in it)."""
        import psycopg

        schema = self._made.pop(ledger_url, None)
        if schema and self.url:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def drop(self) -> None:
        if self.name is None:
            return
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.name = self.url = None


SESSION = SessionDatabase()


def new_ledger_url() -> str:
    return SESSION.new_ledger_url()


# -- a database of either backend (tests/conftest.py's ``db_backend``) -------------------------


def new_database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path | str:
    """A fresh, empty database of backend ``kind``: a SQLite file's path (not yet made) or the
    URL of a new schema of the session's PostgreSQL database."""
    if kind == "postgres":
        return SESSION.new_ledger_url()
    return tmp_path_factory.mktemp("ledger") / "ledger.db"


def drop_database(db: Path | str) -> None:
    """Drop what ``new_database`` made on PostgreSQL (a SQLite file goes with its tmp dir)."""
    if isinstance(db, str):
        SESSION.drop_schema(db)


def execute(db: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` (portable SQL, ``?`` for each parameter) on a connection of its own to
    ``db``, a SQLite file's path or a PostgreSQL URL, and commit; its rows, if it has any."""
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db, connect_timeout=10) as conn:  # commits on leaving
            # psycopg's placeholders are %s (and a literal % is %%).
            cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description is not None else []
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()
