from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from api.composition import Store
from ledger.events import BlobRef
from ledger.log import Actor, Envelope
from tests.pg import drop_database, needs_postgres, new_database

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A fixed point in time, ``seconds`` after T0 (the domain never reads a clock)."""
    return T0 + timedelta(seconds=seconds)


def blob(data: bytes) -> BlobRef:
    return BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def envelope(when: datetime = T0, role: str = "user", key_id: str | None = "k1") -> Envelope:
    return Envelope(recorded_at=when, actor=Actor(key_id=key_id, role=role), request_id="req-1")


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ledger.db")
    yield s
    s.close()


#: The backends the fixtures ``server``, ``real_server`` and ``database`` run on: every module that
#: uses them runs once per backend. The PostgreSQL one needs ``TASKLEDGER_TEST_PG`` (tests/pg.py):
#: without it, it is skipped with a message naming the variable.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=needs_postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend under test for the module's databases (``server``, ``real_server``,
    ``database``): ``"sqlite"`` or ``"postgres"``. A module about what only SQLite has (its file
    on disk, sqlite3 itself) overrides it with a fixture that returns ``"sqlite"`` and says why."""
    return request.param


@pytest.fixture
def database(db_backend, tmp_path_factory):
    """A fresh database of the backend under test, for a test that opens its own server or
    service on it (settings of its own): a SQLite file's path (not yet made) or a PostgreSQL
    URL (``api.settings.settings_for`` takes either). Dropped when the test ends."""
    db = new_database(db_backend, tmp_path_factory)
    yield db
    drop_database(db)


@pytest.fixture(scope="module")
def server(db_backend, tmp_path_factory):
    """The API over a fresh database of the backend under test (``db_backend``), one per test
    module and backend, served in this process with Litestar's test client (tests/inprocess.py):
    same interface as ``tests.server.Server``. ``server.db`` is the SQLite file's path or the
    PostgreSQL URL. ``server.admin_key`` is the admin key made on start (as ``taskledger serve``
    makes on an empty database). A module whose tests need a real ``taskledger serve`` process
    (real HTTP, a streamed response, the server's log file, a client that only speaks to a URL)
    overrides this fixture with ``real_server``."""
    from tests.inprocess import InProcessServer

    db = new_database(db_backend, tmp_path_factory)
    srv = InProcessServer(db).start()
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(db)


@pytest.fixture(scope="module")
def real_server(db_backend, tmp_path_factory):
    """A real ``taskledger serve`` on a free 127.0.0.1 port, over a fresh database of the backend
    under test; one per test module and backend. ``server.admin_key`` is the key it left on
    first start."""
    from tests.server import Server

    db = new_database(db_backend, tmp_path_factory)
    srv = Server(db, workdir=tmp_path_factory.mktemp("serve")).start()
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(db)


@pytest.fixture(scope="module")
def user_keys(server):
    """Two user keys (alice, bob) and a worker key, written straight into the database
    (``tests.inprocess.add_key``; ``taskledger keys create`` itself is tested in
    tests/api/test_cli_keys.py), and the server's admin key."""
    from tests.inprocess import add_key

    assert server.admin_key, "the server made an admin key on its first start"
    return {
        "alice": add_key(server.db, "alice"),
        "bob": add_key(server.db, "bob"),
        "worker": add_key(server.db, "pool", "worker"),
        "admin": server.admin_key,
    }


@pytest.fixture(scope="session", autouse=True)
def _postgres_session_database():
    """Drop the session's PostgreSQL database (tests/pg.py) when the session ends, if a test
    made one."""
    from tests.pg import SESSION

    yield
    SESSION.drop()
