"""The backend contract suite's fixtures: every test here runs against each backend in
``BACKENDS``, through the storage port only (``ledger.log``'s protocols).

A backend joins the suite with one line in ``BACKENDS``: a function that takes the test's
temporary directory and returns a factory with the methods of ``BackendFactory``. The
PostgreSQL one gives each ``create()`` a fresh schema of the session's database (tests/pg.py)
and drops them in ``dispose()``; it runs when ``TASKLEDGER_TEST_PG`` names a server.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from ledger.log import Backend
from ledger.postgres import PostgresBackend
from ledger.sqlite import SqliteBackend
from tests.pg import SESSION, needs_postgres


class BackendFactory(Protocol):
    """How the suite gets backends, whatever they run on."""

    def create(self) -> Backend:
        """A backend on a new, empty database of its own."""
        ...

    def attach(self, backend: Backend) -> Backend:
        """A second, independent instance on ``backend``'s database: what another server
        process would open (its own connections, its own locks)."""
        ...

    def backup_destination(self) -> Any:
        """Somewhere ``Backend.backup`` can write a copy to (for SQLite a new file's path)."""
        ...

    def open_backup(self, destination: Any) -> Backend:
        """The copy ``backup`` wrote to ``destination``, opened as a backend."""
        ...

    def dispose(self) -> None:
        """Drop whatever the factory made (the backends are closed already)."""
        ...


class SqliteFactory:
    """SQLite backends, each on its own file under the test's temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)

    def create(self) -> SqliteBackend:
        return SqliteBackend(self.root / f"ledger-{next(self._numbers)}.db")

    def attach(self, backend: Backend) -> SqliteBackend:
        assert isinstance(backend, SqliteBackend)
        return SqliteBackend(backend.path)

    def backup_destination(self) -> Path:
        return self.root / f"backup-{next(self._numbers)}.db"

    def open_backup(self, destination: Any) -> SqliteBackend:
        return SqliteBackend(destination)

    def dispose(self) -> None:
        pass  # the files go with tmp_path


def make_sqlite(tmp_path: Path) -> BackendFactory:
    return SqliteFactory(tmp_path)


class PostgresFactory:
    """PostgreSQL backends, each on a fresh schema of the session's database; a backup is a
    SQLite file (what ``PostgresBackend.backup`` writes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)
        self._urls: list[str] = []

    def create(self) -> PostgresBackend:
        url = SESSION.new_ledger_url()
        self._urls.append(url)
        return PostgresBackend(url)

    def attach(self, backend: Backend) -> PostgresBackend:
        assert isinstance(backend, PostgresBackend)
        return PostgresBackend(backend.url)

    def backup_destination(self) -> Path:
        return self.root / f"backup-{next(self._numbers)}.db"

    def open_backup(self, destination: Any) -> SqliteBackend:
        return SqliteBackend(destination)

    def dispose(self) -> None:
        for url in self._urls:
            SESSION.drop_schema(url)
        self._urls.clear()


def make_postgres(tmp_path: Path) -> BackendFactory:
    return PostgresFactory(tmp_path)


#: Every backend the contract suite runs against.
BACKENDS = [
    pytest.param(make_sqlite, id="sqlite"),
    pytest.param(make_postgres, id="postgres", marks=needs_postgres),
]


class Backends:
    """A factory that closes every backend it handed out when the test ends."""

    def __init__(self, factory: BackendFactory) -> None:
        self.factory = factory
        self._opened: list[Backend] = []

    def _keep(self, backend: Backend) -> Backend:
        self._opened.append(backend)
        return backend

    def create(self) -> Backend:
        return self._keep(self.factory.create())

    def attach(self, backend: Backend) -> Backend:
        return self._keep(self.factory.attach(backend))

    def backup_destination(self) -> Any:
        return self.factory.backup_destination()

    def open_backup(self, destination: Any) -> Backend:
        return self._keep(self.factory.open_backup(destination))

    def close(self) -> None:
        try:
            for backend in reversed(self._opened):
                backend.close()
        finally:
            self._opened.clear()
            self.factory.dispose()


def _backends(make: Callable[[Path], BackendFactory], directory: Path) -> Iterator[Backends]:
    backends = Backends(make(directory))
    try:
        yield backends
    finally:
        backends.close()


@pytest.fixture(params=BACKENDS)
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backends]:
    """The backend under test's factory (one test per entry of BACKENDS)."""
    yield from _backends(request.param, tmp_path / "under-test")


#: The same backends as targets of a transfer (ids "into-sqlite", ...).
TARGETS = [pytest.param(*p.values, id=f"into-{p.id}", marks=p.marks) for p in BACKENDS]


@pytest.fixture(params=TARGETS)
def target_backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backends]:
    """Every backend again, for what must work from one backend to another (an export of
    one imports into each)."""
    yield from _backends(request.param, tmp_path / "target")


@pytest.fixture
def backend(backends: Backends) -> Backend:
    """A backend on a new, empty database."""
    return backends.create()


@pytest.fixture
def other(backends: Backends, backend: Backend) -> Backend:
    """A second instance on ``backend``'s database, as another process would open it."""
    return backends.attach(backend)


@pytest.fixture
def fresh(backends: Backends) -> Backend:
    """Another backend of the same kind on a database of its own (empty)."""
    return backends.create()
