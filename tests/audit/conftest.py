"""Fixtures for the audit tests (helpers are in audit_support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from audit_support import Burst, Tasks


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
