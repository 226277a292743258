"""Fixtures of the multi-node tests: three ``taskledger serve`` processes on one PostgreSQL
ledger, started once per test module (``cluster``), with the flags the module names in
``NODE_FLAGS``. Every test here needs PostgreSQL (``TASKLEDGER_TEST_PG``, tests/pg.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from multinode_support import Cluster

from tests.pg import SESSION


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    """Three nodes on a fresh schema of the session's test database; the schema is dropped
    after the module."""
    flags = tuple(getattr(request.module, "NODE_FLAGS", ()))
    url = SESSION.new_ledger_url()
    nodes = Cluster(url, tmp_path_factory.mktemp("nodes"), flags)
    try:
        yield nodes.start()
    finally:
        nodes.stop()
        SESSION.drop_schema(url)
