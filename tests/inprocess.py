"""The API served in the test process, with Litestar's test client, for the HTTP contract tests
that need no real server process.

``InProcessServer`` has the interface of ``tests.server.Server`` (``db``, ``url``, ``api``,
``admin_key``, ``client(key)``, ``start()``, ``stop()``): the app (``create_app(Settings(...))``)
runs its lifespan once, on one ``TestClient`` and its one event-loop thread (the blocking portal);
every ``client(key)`` is a plain ``httpx.Client`` whose transport hands the request to that app.
No socket is opened, so a test that is about real HTTP (what uvicorn does with the bytes on the
wire, connection close, a streamed response read while it is written, the server's log file)
keeps using ``tests.server.Server``.

Absolute URLs the API builds from the request's Host header (``task_url``, ``input_file_url``)
start with ``InProcessServer.url`` (``http://testserver.local``): its host is the server's
``allowed_hosts`` unless a test gives others (the Settings default names only localhost).

Keys are written straight into the database with ``add_key`` (and revoked with ``revoke_key``):
this module is the one place in the tests that calls the key store (``api.keys``; ``taskledger
keys`` itself is tested in tests/api/test_cli_keys.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import httpx

BASE_URL = "http://testserver.local"


#: A database as the tests name it: a SQLite file's path or a PostgreSQL URL (``api.composition``).
Database = Path | str


def _store(db: Database) -> Any:
    """The database as ``taskledger keys`` opens it (created with its schema if new)."""
    from api.composition import Store

    return Store(db, busy_timeout_ms=30_000)


def add_key(db: Database, owner: str, role: str = "user") -> str:
    """A new key for ``owner`` with ``role``, written straight into the database (what
    ``taskledger keys create`` does, without a subprocess). Returns the key."""
    from api import keys as key_store

    store = _store(db)
    try:
        _, key = key_store.create_key(store.records, owner, role)
    finally:
        store.close()
    return key


def revoke_key(db: Database, key: str) -> None:
    """Revoke ``key`` in the database (what ``taskledger keys revoke <key id>`` does)."""
    from api import keys as key_store

    store = _store(db)
    try:
        assert key_store.revoke_key(store.records, key.split("_")[1]), "no such active key"
    finally:
        store.close()


def _has_keys(db: Database) -> bool:
    from api.settings import is_database_url

    if not is_database_url(db) and not Path(db).exists():
        return False  # not made yet (opening it would make it)
    store = _store(db)
    try:
        return store.records.count_keys() > 0
    finally:
        store.close()


class _AppTransport(httpx.BaseTransport):
    """Hands each request to the started ``TestClient``'s app (through its blocking portal, so
    every client shares the one running app). Closing a client leaves the app running."""

    def __init__(self, server: InProcessServer) -> None:
        from litestar.testing.transport import TestClientTransport

        self._server = server
        self._transport = TestClientTransport(client=server.test_client)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._server.running:
            raise httpx.ConnectError("the in-process server is not running", request=request)
        return self._transport.handle_request(request)


class InProcessServer:
    """``create_app(settings_for(db, **settings))`` in this process (``db``: a SQLite file's
    path or a PostgreSQL URL). ``settings`` are
    ``api.settings.Settings`` fields; the flags of ``taskledger serve`` map onto them (see
    scripts/cli.py), e.g. ``--sweep-interval 0`` is ``sweep_interval=0``. As ``serve`` does, a
    database with no keys gets an admin key on start (``admin_key``)."""

    def __init__(self, db: Database, **settings: Any) -> None:
        from api.settings import settings_for

        self.db = db
        settings.setdefault("allowed_hosts", (BASE_URL.removeprefix("http://"),))
        self.settings = settings_for(db, **settings)
        self.url = BASE_URL
        self.api = f"{BASE_URL}/api/v1"
        self.admin_key: str | None = None
        self.app: Any = None
        self.test_client: Any = None
        self.running = False

    def start(self) -> InProcessServer:
        from litestar.testing import TestClient

        from api.app import create_app

        if not _has_keys(self.db):
            self.admin_key = add_key(self.db, "admin", "admin")
        self.app = create_app(self.settings)
        self.test_client = TestClient(self.app, base_url=self.url)
        self.test_client.__enter__()  # the portal's event loop, and the app's lifespan startup
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.test_client.__exit__(None, None, None)  # lifespan shutdown, then the portal

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": key} if key else {}
        return httpx.Client(
            base_url=self.api, headers=headers, timeout=30, transport=_AppTransport(self)
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
