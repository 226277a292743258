"""Fixtures of the reliability suite: real ``taskledger serve`` processes on fresh databases, and
the API served in the test process (tests/inprocess.py) for tests that need no process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.inprocess import InProcessServer
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


@pytest.fixture
def serve_in_process(tmp_path) -> Iterator[Callable[..., InProcessServer]]:
    """``serve_in_process(**settings)``: the API served in this process over a new database in
    ``tmp_path``; ``settings`` are ``api.settings.Settings`` fields, as ``taskledger serve``'s
    flags set them (``--sweep-interval 0`` is ``sweep_interval=0``, ``--rate-limit 2`` is
    ``rate_limit_per_second=2``). Every server started is stopped after the test."""
    started: list[InProcessServer] = []

    def start(**settings: object) -> InProcessServer:
        server = InProcessServer(tmp_path / f"inprocess{len(started)}.db", **settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
