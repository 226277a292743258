"""Webhook tests: a real ``taskledger serve`` that may post to 127.0.0.1 (``--allow-private-
webhooks``), with short retry delays, and a receiver on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.pg import drop_database, new_database
from tests.server import Server
from tests.webhooks.receiver import Receiver

#: serve's flags for these tests: private addresses allowed (the receiver is on 127.0.0.1), the
#: retry delays a thousandth of production's (5 ms, 30 ms, 120 ms, ...), a 3 s attempt timeout.
FLAGS = (
    "--allow-private-webhooks",
    "--webhook-backoff-scale",
    "0.001",
    "--webhook-timeout",
    "3",
    "--sweep-interval",
    "0.2",
)


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def hook_server(db_backend, tmp_path_factory):
    db = new_database(db_backend, tmp_path_factory)
    srv = Server(db, *FLAGS, workdir=tmp_path_factory.mktemp("serve")).start()
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(db)


@pytest.fixture(scope="module")
def keys(hook_server):
    from tests.inprocess import add_key

    return {
        "alice": add_key(hook_server.db, "alice"),
        "bob": add_key(hook_server.db, "bob"),
        "worker": add_key(hook_server.db, "pool", "worker"),
        "admin": hook_server.admin_key,
    }
