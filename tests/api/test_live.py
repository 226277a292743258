"""The live feed and the long poll without HTTP (``api.live``): a stream reads only when the log
moved for it (its owner's commits wake it, other owners' do not; an admin's wakes on every
commit); another process's appends reach it through the watch's look at the log; a revoked
key ends it; a key holds at most ``max_streams_per_key`` of them; the feed leaves out a task
past its expiry before the sweeper has recorded it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from api.composition import close_service, open_service
from api.keys import create_key, revoke_key
from api.live import Follow
from api.policy import Caller
from api.refusals import InvalidKey, TooManyStreams
from api.service import TaskLedger
from api.settings import settings_for
from ledger.log import RecordedEvent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def service(database) -> AsyncIterator[TaskLedger]:
    opened = open_service(settings_for(database, sweep_interval=0, max_streams_per_key=3))
    opened.watch.key_check = 0.1  # re-read the keys often: these tests wait for revocations
    yield opened
    close_service(opened)


def key(service: TaskLedger, owner: str, role: str = "user") -> tuple[Caller, str]:
    _, made = create_key(service.store.records, owner, role)
    return service.authenticate(made), made


class Reader:
    """A follow read in a task: the pages it got, and how many reads its stream made."""

    def __init__(self, follow: Follow) -> None:
        self.follow = follow
        self.events: list[RecordedEvent] = []
        self.keep_alives = 0
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for page in self.follow.pages():
            if not page:
                self.keep_alives += 1
            self.events += page

    async def until(self, count: int, timeout: float = 5) -> list[RecordedEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"got {len(self.events)} of {count} events"
            await asyncio.sleep(0.01)
        return self.events

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def counting_reads(service: TaskLedger) -> list[str | None]:
    """Count the feed pages the service reads from now on: the owner of each (None: an
    admin's)."""
    reads: list[str | None] = []
    feed = service.store.views.feed

    def counted(query, **kw):
        reads.append(query.owner)
        return feed(query, **kw)

    service.store.views.feed = counted  # type: ignore[method-assign]
    return reads


@pytest.mark.anyio
async def test_a_stream_is_woken_by_its_owners_commits_and_not_by_anyone_elses(service):
    (alice, _), (bob, _) = key(service, "alice"), key(service, "bob")
    (admin, _) = key(service, "root", "admin")
    first = await service.create(alice, file=b"a")
    reads = counting_reads(service)
    mine = Reader(await service.follow(alice))
    everyone = Reader(await service.follow(admin))
    assert [e.event.task_id for e in await mine.until(1)] == [first.state.task_id]
    await everyone.until(1)
    await asyncio.sleep(0.2)  # the watch's first look at the log, and its wake-up, are past
    before = len(reads)

    for _ in range(10):
        await service.create(bob, file=b"b")
    await everyone.until(11)
    await asyncio.sleep(0.2)
    # The admin's stream read for bob's commits, at most once a commit; alice's never woke.
    assert "alice" not in reads[before:]
    assert 1 <= reads[before:].count(None) <= 10
    assert len(everyone.events) == 11 and len(mine.events) == 1

    second = await service.create(alice, file=b"a2")
    got = await mine.until(2)
    assert got[-1].event.task_id == second.state.task_id
    await mine.stop()
    await everyone.stop()


@pytest.mark.anyio
async def test_an_idle_stream_makes_no_read_while_nothing_is_appended(service):
    (alice, _) = key(service, "alice")
    reads = counting_reads(service)
    reader = Reader(await service.follow(alice))
    await asyncio.sleep(0.3)  # the first read and the watch's first look
    settled = len(reads)
    await asyncio.sleep(1.5)  # three looks at the log and a key check: no read of the feed
    assert len(reads) == settled <= 2
    await reader.stop()


@pytest.mark.anyio
async def test_another_processes_appends_reach_the_stream(service):
    (alice, key_text) = key(service, "alice")
    reader = Reader(await service.follow(alice))
    await asyncio.sleep(0.1)
    # Another process: its own service over the same database, writing through its own writer.
    other = open_service(settings_for(service.store.db, sweep_interval=0))
    try:
        made = await other.create(other.authenticate(key_text), file=b"elsewhere")
        got = await reader.until(1, timeout=5)
        assert got[0].event.task_id == made.state.task_id
    finally:
        close_service(other)
        await reader.stop()


@pytest.mark.anyio
async def test_another_processes_event_followed_at_once_by_one_of_ours_still_wakes_its_owner(
    service,
):
    """The watch must not take the log's last position, which this process's own commit just
    moved, for a sign that nothing else was appended before it."""
    (alice, key_text), (bob, _) = key(service, "alice"), key(service, "bob")
    reader = Reader(await service.follow(alice))
    await asyncio.sleep(0.7)  # past the watch's first look at the log
    other = open_service(settings_for(service.store.db, sweep_interval=0))
    try:
        theirs = await other.create(other.authenticate(key_text), file=b"elsewhere")
        await service.create(bob, file=b"here")  # bob's: wakes no stream of alice's
        got = await reader.until(1, timeout=5)
        assert got[0].event.task_id == theirs.state.task_id
    finally:
        close_service(other)
        await reader.stop()


@pytest.mark.anyio
async def test_a_revoked_keys_stream_ends_and_its_waiting_claim_is_refused(service):
    (alice, alice_key) = key(service, "alice")
    (worker, worker_key) = key(service, "pool", "worker")
    (bob, _) = key(service, "bob")
    follow = await service.follow(alice)
    reader = Reader(follow)
    claim = asyncio.ensure_future(service.claim(worker, "w1", wait_seconds=30))
    await asyncio.sleep(0.2)

    revoke_key(service.store.records, alice_key.split("_")[1])
    await asyncio.wait_for(reader.task, 5)
    assert follow.revoked
    assert service.watch.streams_open(alice.key_id) == 0, "the slot was given back"

    revoke_key(service.store.records, worker_key.split("_")[1])
    created = await service.create(bob, file=b"for nobody")  # wakes the claim at once
    with pytest.raises(InvalidKey):
        await asyncio.wait_for(claim, 5)
    after = await service.get(bob, created.state.task_id)
    assert after.state.status == "Starting", "a revoked worker takes nothing"


@pytest.mark.anyio
async def test_a_key_holds_at_most_its_streams_and_a_closed_one_gives_its_slot_back(service):
    (alice, _), (other_key, _) = key(service, "alice"), key(service, "alice")
    opened = [await service.follow(alice) for _ in range(3)]
    with pytest.raises(TooManyStreams) as refused:
        await service.follow(alice)
    assert refused.value.retry_after >= 1
    extra = await service.follow(other_key)  # per key, not per owner
    opened[0].close()
    opened[0].close()  # closing twice gives one slot back, once
    again = await service.follow(alice)
    with pytest.raises(TooManyStreams):
        await service.follow(alice)
    for follow in [*opened, extra, again]:
        follow.close()
    assert service.watch.streams_open(alice.key_id) == 0


@pytest.mark.anyio
async def test_a_task_past_its_expiry_leaves_its_owners_feed_before_the_sweep(service):
    now = [service.clock()]
    service.clock = lambda: now[0]
    (alice, _), (admin, _) = key(service, "alice"), key(service, "root", "admin")
    made = await service.create(alice, file=b"x", configuration={"expires_in": 60})
    await service.cancel(alice, made.state.task_id)
    assert len(await service.feed(alice)) == 2
    now[0] += timedelta(seconds=61)  # past expires_at; no sweeper has run
    assert await service.feed(alice) == []
    assert len(await service.feed(admin)) == 2, "an admin audits everything"
