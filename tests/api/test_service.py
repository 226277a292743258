"""The application service without HTTP: the use cases the CLI and the adapter share, called as
plain methods on a real SQLite file; and the layering the issue asks for (no Litestar in the
service, no deprecation warning when the app is built)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from api.composition import close_service, open_service
from api.keys import create_key
from api.policy import POLICY, Caller, Forbidden, Scope, UseCase, authorize
from api.refusals import IdempotencyMismatch
from api.service import TaskLedger
from api.settings import settings_for
from ledger.errors import InvalidTransition, TaskNotFound
from tests.support import chunkr_output

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def service(database) -> AsyncIterator[TaskLedger]:
    opened = open_service(settings_for(database, sweep_interval=0))
    yield opened
    close_service(opened)


def key(service: TaskLedger, owner: str, role: str) -> Caller:
    return service.authenticate(create_key(service.store.records, owner, role)[1])


@pytest.mark.anyio
async def test_a_task_lives_through_the_use_cases_without_http(service):
    alice, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    created = await service.create(alice, file=b"hello", file_name="a.txt", request_id="r-1")
    assert (created.state.status, created.state.message) == ("Starting", "Task queued")
    claimed = await service.claim(worker, "w1", lease_seconds=30)
    assert claimed is not None and claimed.state.task_id == created.state.task_id
    assert claimed.state.lease_until == claimed.state.started_at + timedelta(seconds=30)
    finished = await service.complete(
        worker, created.state.task_id, "w1", chunkr_output("a.txt"), claim_next=True
    )
    assert finished.task.state.status == "Succeeded" and finished.next is None
    got = await service.get(alice, created.state.task_id)
    assert got.output is not None and got.output["chunks"][0]["chunk_id"]
    history = (await service.history(alice, created.state.task_id)).events
    assert [type(e.event).__name__ for e in history] == ["TaskCreated", "Claimed", "Succeeded"]
    assert history[0].request_id == "r-1" and history[0].actor.key_id == alice.key_id
    first = await service.get(alice, created.state.task_id, as_of_version=1)
    assert first.state.status == "Starting"
    assert [v.state.task_id for v in await service.list_tasks(alice)] == [created.state.task_id]


@pytest.mark.anyio
async def test_an_idempotent_retry_is_answered_from_the_stored_outcome(service):
    alice = key(service, "alice", "user")
    first = await service.create(alice, file=b"x", idempotency_key="k")
    again = await service.create(alice, file=b"x", idempotency_key="k")
    assert again == first
    assert len(await service.list_tasks(alice)) == 1
    with pytest.raises(IdempotencyMismatch):
        await service.create(alice, file=b"other", idempotency_key="k")
    cancelled = await service.cancel(alice, first.state.task_id, idempotency_key="c")
    retried = await service.cancel(alice, first.state.task_id, idempotency_key="c")
    assert cancelled == retried and retried.state.status == "Cancelled"
    with pytest.raises(InvalidTransition, match="status is Cancelled"):
        await service.cancel(alice, first.state.task_id)


@pytest.mark.anyio
async def test_an_expired_task_is_gone_by_the_commands_own_time(database):
    now = [None]
    settings = settings_for(database, sweep_interval=0)
    service = open_service(settings)
    real_clock = service.clock
    service.clock = lambda: now[0] or real_clock()
    try:
        alice = key(service, "alice", "user")
        task = await service.create(alice, file=b"x", configuration={"expires_in": 60})
        await service.cancel(alice, task.state.task_id)
        expires_at = (await service.get(alice, task.state.task_id)).state.expires_at
        assert expires_at is not None
        now[0] = expires_at  # no sweep has run: the rule alone hides it
        with pytest.raises(TaskNotFound):
            await service.get(alice, task.state.task_id)
        with pytest.raises(TaskNotFound):
            await service.delete(alice, task.state.task_id)
        assert await service.list_tasks(alice) == []
    finally:
        close_service(service)


@pytest.mark.anyio
async def test_roles_are_refused_by_the_one_policy_table(service):
    worker, alice = key(service, "pool", "worker"), key(service, "alice", "user")
    with pytest.raises(Forbidden, match="A worker key cannot create tasks"):
        await service.create(worker, file=b"x")
    with pytest.raises(Forbidden, match="A user key cannot claim tasks"):
        await service.claim(alice, "w1")
    with pytest.raises(Forbidden, match="A worker key cannot read the event feed"):
        await service.feed(worker)


@pytest.mark.parametrize("use_case", list(UseCase))
@pytest.mark.parametrize("role", ["user", "worker", "admin"])
def test_authorize_reads_the_table_and_nothing_else(use_case, role):
    caller = Caller(key_id="k", owner="o", role=role)
    scope = POLICY[use_case].get(role)
    if scope is None:
        with pytest.raises(Forbidden):
            authorize(use_case, caller)
    else:
        grant = authorize(use_case, caller)
        assert grant.scope is scope
        assert grant.owner == ("o" if scope is Scope.OWN else None)


def test_the_service_imports_nothing_from_litestar():
    code = (
        "import sys, api.service, api.composition;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] == 'litestar'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_app_is_built_without_a_deprecation_warning(tmp_path):
    code = (
        "from pathlib import Path; from api.app import create_app;"
        " from api.settings import Settings;"
        f" create_app(Settings(db_path=Path({str(tmp_path / 'x.db')!r})))"
    )
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr


def test_no_route_reads_the_request_from_a_context_variable():
    for path in (ROOT / "api").glob("*.py"):
        assert "current()" not in path.read_text(), path


@pytest.mark.anyio
async def test_a_claim_waits_for_work_and_returns_none_when_none_comes(service):
    worker = key(service, "pool", "worker")
    assert await service.claim(worker, "w1", wait_seconds=0) is None
    alice = key(service, "alice", "user")
    waiting = asyncio.ensure_future(service.claim(worker, "w1", wait_seconds=5))
    await asyncio.sleep(0.05)
    created = await service.create(alice, file=b"x")
    claimed = await asyncio.wait_for(waiting, 5)
    assert claimed is not None and claimed.state.task_id == created.state.task_id
