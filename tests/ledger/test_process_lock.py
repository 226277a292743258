"""Server processes on one database take turns to write through a kernel lock on a side file:
a writer waits for the other process's turn to end (it does not fail, and does not poll), what
arrives meanwhile joins its next batch, and a lock held by a process dies with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from stories import at, blob, check_consistent, envelope, new_id

from api.groupcommit import Writer
from ledger.commands import CreateTask
from ledger.handler import Request
from ledger.sqlite.lock import ProcessWriteLock, fcntl

pytestmark = pytest.mark.skipif(fcntl is None, reason="flock is POSIX-only")

HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()  # hold until told to go (or until the test kills us)
    """
)


class OtherProcess:
    """Another process holding the write lock of a database until released or killed."""

    def __init__(self, lock_path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.proc.wait(10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def held_elsewhere(lock_path) -> bool:
    """Whether some open file description holds the lock (checked from a fresh one)."""
    import os

    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we got it
    return False


def create(task_id: str) -> Request:
    data = task_id.encode()
    return Request(
        command=CreateTask(
            task_id=task_id, at=at(0), owner="alice", configuration={}, file=blob(data)
        ),
        envelope=envelope(at(0)),
        blobs=(data,),
    )


def test_a_transaction_waits_for_another_process_turn_then_commits(store):
    lock_path = ProcessWriteLock(store.log.path).path
    other = OtherProcess(lock_path)
    done = threading.Event()
    task_id = new_id()

    def write() -> None:
        store.handler.execute_batch([create(task_id)])
        done.set()

    thread = threading.Thread(target=write)
    try:
        thread.start()
        assert not done.wait(0.5), "wrote while another process held the write lock"
        other.release()
        assert done.wait(10)
    finally:
        if other.proc.poll() is None:
            other.kill()
        thread.join(10)
    assert store.state(task_id) is not None
    check_consistent(store)


def test_a_lock_dies_with_its_process(store):
    lock_path = ProcessWriteLock(store.log.path).path
    other = OtherProcess(lock_path)
    other.kill()  # no release: the kernel drops the lock with the process
    task_id = new_id()
    (result,) = store.handler.execute_batch([create(task_id)])
    assert not isinstance(result, BaseException)
    assert store.state(task_id) is not None


def test_the_turn_is_held_across_nested_transactions_and_let_go_after(store):
    log = store.log
    with log.write_turn():
        with log.transaction() as tx:
            tx.execute("SELECT 1")
        # The inner transaction ended but the turn did not: another process still cannot write.
        assert held_elsewhere(log._process_lock.path)
        store.handler.execute_batch([create(new_id())])
        assert held_elsewhere(log._process_lock.path)
    assert not held_elsewhere(log._process_lock.path)


def test_commands_that_arrive_during_another_process_turn_join_one_batch(store):
    writer = Writer(store.handler)
    writer.start()
    lock_path = ProcessWriteLock(store.log.path).path
    other = OtherProcess(lock_path)
    try:
        ids = [new_id() for _ in range(6)]
        futures = [writer.submit(create(ids[0]))]
        time.sleep(0.5)  # the writer has taken the first and is waiting for its turn
        futures += [writer.submit(create(task_id)) for task_id in ids[1:]]
        time.sleep(0.1)
        assert not any(f.done() for f in futures)
        batches_before = writer.batches
        other.release()
        for future in futures:
            assert not isinstance(future.result(10), BaseException)
    finally:
        if other.proc.poll() is None:
            other.kill()
        writer.stop()
    # All six went into the transaction the writer ran once its turn came, including the five
    # that arrived after it had taken the first and begun to wait.
    assert writer.batches - batches_before == 1
    assert writer.commands == 6
    check_consistent(store)


def test_a_writer_gives_up_after_the_busy_timeout_and_loses_nothing(tmp_path):
    from api.composition import Store
    from ledger.errors import StorageUnavailable

    store = Store(tmp_path / "ledger.db", busy_timeout_ms=300)
    other = OtherProcess(ProcessWriteLock(store.log.path).path)
    try:
        task_id = new_id()
        started = time.monotonic()
        (result,) = store.handler.execute_batch([create(task_id)])
        assert isinstance(result, StorageUnavailable), result
        assert "held its write lock" in str(result)
        assert 0.25 < time.monotonic() - started < 5
        assert store.state(task_id) is None  # nothing written
        other.release()
        # The wait given up on gets the lock once the other process lets go, and lets it go.
        deadline = time.monotonic() + 5
        while held_elsewhere(store.log._process_lock.path) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not held_elsewhere(store.log._process_lock.path)
        (result,) = store.handler.execute_batch([create(task_id)])
        assert not isinstance(result, BaseException), result
        assert store.state(task_id) is not None
        check_consistent(store)
    finally:
        if other.proc.poll() is None:
            other.kill()
        store.close()
