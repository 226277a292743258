"""Fixtures of the reliability suite: real ``taskledger serve`` processes on fresh databases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server import Server


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., Server]]:
    """``serve(*flags, db=None)``: a started ``taskledger serve`` (on a new database in
    ``tmp_path`` unless ``db`` is given). Every server started is stopped after the test."""
    started: list[Server] = []

    def start(*flags: str, db: Path | None = None) -> Server:
        server = Server(db or tmp_path / f"ledger{len(started)}.db", *flags).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
