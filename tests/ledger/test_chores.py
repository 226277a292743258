"""Chores: work that is not a command but rides a group-commit batch's transaction (the webhook
dispatcher's bookkeeping), and how the writer tells the dispatcher the API is busy."""

from __future__ import annotations

import time
from concurrent.futures import Future
from types import SimpleNamespace

from stories import at, blob, envelope, new_id

from api.dispatch import BURST, SHARE, Dispatcher
from api.groupcommit import Writer
from ledger.commands import CreateTask
from ledger.handler import Chore, Request


def create_request(task_id: str) -> Request:
    return Request(
        command=CreateTask(
            task_id=task_id, at=at(0), owner="alice", configuration={}, file=blob(b"file")
        ),
        envelope=envelope(at(0)),
        blobs=(b"file",),
    )


def test_a_chore_writes_in_the_batch_of_the_commands_beside_it(store):
    seen = []

    def chore(tx):
        seen.append(store.log.stream_version(f"task-{first}", tx=tx))
        store.webhooks.set_secrets(tx, "default:alice", store_secret())  # it may write too
        return "done"

    first = new_id()
    results = store.handler.execute_batch(
        [create_request(first), Chore(run=chore), create_request(new_id())]
    )
    assert results[1] == "done"
    assert seen == [1]  # the command before it in the batch is visible to it
    assert results[0].after.version == results[2].after.version == 1
    assert store.webhooks.secrets("default:alice") == store_secret()  # committed with them


def test_a_chore_that_fails_is_undone_alone(store):
    def failing(tx):
        store.webhooks.set_secrets(tx, "default:x", store_secret())
        raise RuntimeError("no luck")

    ok = new_id()
    results = store.handler.execute_batch([Chore(run=failing), create_request(ok)])
    assert isinstance(results[0], RuntimeError)
    assert results[1].after.version == 1  # the command beside it committed
    assert store.webhooks.secrets("default:x") is None  # the chore's write was undone


def store_secret():
    from ledger.log import WebhookSecrets

    return WebhookSecrets(secret="whsec_" + "A" * 44)


def run_batch(writer: Writer, items) -> None:
    """Queue every item before the writer's thread starts, so they make one batch."""
    futures = []
    for item in items:
        future: Future = Future()
        writer._queue.put((item, future))
        futures.append(future)
    writer.start()
    for future in futures:
        future.result(timeout=30)


def test_a_chore_beside_one_command_does_not_make_the_writer_busy(store):
    writer = Writer(store.handler)
    try:
        run_batch(writer, [create_request(new_id()), Chore(run=lambda tx: None)])
        assert writer.busy is False
        assert writer.commands == 1  # a chore is not a command
    finally:
        writer.stop()


def test_several_commands_in_a_batch_make_the_writer_busy(store):
    writer = Writer(store.handler)
    try:
        run_batch(writer, [create_request(new_id()), create_request(new_id())])
        assert writer.busy is True
    finally:
        writer.stop()


def dispatcher(busy: bool) -> Dispatcher:
    service = SimpleNamespace(
        settings=SimpleNamespace(webhook_concurrency=16, webhook_timeout=10.0),
        webhook_base_url=lambda: "http://127.0.0.1:8000",
        store=SimpleNamespace(is_postgres=False),
        writer=SimpleNamespace(busy=busy),
    )
    return Dispatcher(service)  # type: ignore[arg-type]


def test_the_dispatcher_yields_while_busy_and_over_its_budget_then_goes_on(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    d = dispatcher(busy=True)
    d._metered = (clock[0], time.thread_time())
    assert d._places() == 16  # within its budget
    d._chore_cpu += 3 * BURST  # its bookkeeping took more than it may save up
    assert d._places() == 0
    wait = d._refill_wait()
    assert 0.01 <= wait <= BURST / SHARE + 0.01
    clock[0] += wait + 0.01  # the bucket fills again with time: deliveries go on
    assert d._places() == 16


def test_the_dispatcher_does_not_yield_when_the_api_is_idle(monkeypatch):
    d = dispatcher(busy=False)
    d._chore_cpu += 10 * BURST
    assert d._places() == 16
