from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from api.composition import Store
from ledger.events import BlobRef
from ledger.log import Actor, Envelope

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The API over a fresh database, one per test module, served in this process with
    Litestar's test client (tests/inprocess.py): same interface as ``tests.server.Server``.
    ``server.admin_key`` is the admin key made on start (as ``taskledger serve`` makes on an
    empty database). A module whose tests need a real ``taskledger serve`` process (real HTTP, a
    streamed response, the server's log file, a client that only speaks to a URL) overrides this
    fixture with ``real_server``."""
    from tests.inprocess import InProcessServer

    db = tmp_path_factory.mktemp("server") / "ledger.db"
    srv = InProcessServer(db).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """A real ``taskledger serve`` on a free 127.0.0.1 port, over a fresh database; one per
    test module. ``server.admin_key`` is the key it printed on first start."""
    from tests.server import Server

    db = tmp_path_factory.mktemp("server") / "ledger.db"
    srv = Server(db).start()
    yield srv
    srv.stop()


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
