"""Fixtures for the audit tests (helpers are in audit_support.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api import keys
from api.composition import Store
from audit_support import Burst, Tasks


@pytest.fixture(scope="module")
def user_keys(server) -> dict[str, str]:
    """The same keys as tests/conftest.py's fixture (alice, bob, a worker of owner pool, the
    admin key the server printed), made in-process with ``api.keys.create_key`` (what
    ``taskledger keys create`` runs) to spare three subprocesses per module."""
    store = Store(server.db)
    try:
        made = {
            name: keys.create_key(store.records, owner, role)[1]
            for name, owner, role in (
                ("alice", "alice", "user"), ("bob", "bob", "user"), ("worker", "pool", "worker"),
            )
        }
    finally:
        store.close()
    assert server.admin_key, "the server printed an admin key on its first start"
    return {**made, "admin": server.admin_key}


@pytest.fixture(scope="module")
def clients(server, user_keys) -> Iterator[dict[str, httpx.Client]]:
    """HTTP clients for the module's server: alice, bob, worker, admin."""
    made = {name: server.client(key) for name, key in user_keys.items()}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def tasks(clients) -> Tasks:
    """Task commands as alice (user) and the pool worker."""
    return Tasks(clients["alice"], clients["worker"])


@pytest.fixture
def burst(server) -> Iterator[Callable[..., Burst]]:
    """``burst(writer_keys, admin_key, **options)``: concurrent writers (one per key) started on
    the module's server; after the test, they are stopped and waited for."""
    started: list[Burst] = []

    def make(writer_keys: list[str], admin_key: str, **options: Any) -> Burst:
        made = Burst(server, writer_keys, admin_key, **options).start()
        started.append(made)
        return made

    yield make
    for made in started:
        made.stop.set()
        if made.gate is not None:
            made.gate.set()
        made.done.wait(60)
