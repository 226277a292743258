"""What reads cost in outputs: the summary recorded with each output (so answers without chunks
never read it), outputs recorded before summaries (read once per process), answers with chunks
(the stored JSON copied, never re-encoded differently), and the cap on a list with chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from api.composition import close_service, open_service
from api.keys import create_key
from api.links import FileLinks, Linker
from api.output import check_output, summarise
from api.policy import Caller
from api.schemas import encode, render_view
from api.service import ListTooLarge, TaskLedger, TaskView
from api.settings import settings_for
from ledger.commands import ClaimTask, CompleteTask
from ledger.events import OutputSummary, Succeeded, blob_ref
from ledger.log import Actor, Envelope
from tests.support import chunkr_output


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Counted:
    """The store's log with its blob reads counted (by the sha256 asked for)."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.reads: list[str] = []

    def get_blob(self, ref: Any, **kw: Any) -> Any:
        self.reads.append(ref.sha256)
        return self._log.get_blob(ref, **kw)

    def read_blob(self, ref: Any, *args: Any, **kw: Any) -> Any:
        self.reads.append(ref.sha256)
        return self._log.read_blob(ref, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


@pytest.fixture
async def service(database) -> AsyncIterator[TaskLedger]:
    opened = open_service(settings_for(database, sweep_interval=0, max_list_output_bytes=2000))
    yield opened
    close_service(opened)


def key(service: TaskLedger, owner: str, role: str) -> Caller:
    return service.authenticate(create_key(service.store.records, owner, role)[1])


def big_output(file_name: str, chunks: int, page_count: int = 3) -> dict[str, Any]:
    output = chunkr_output(file_name, "x" * 100)
    output["chunks"] = output["chunks"] * chunks
    output["page_count"] = page_count
    output["pdf_url"] = "https://elsewhere.example/doc.pdf"
    return output


async def succeeded_task(service: TaskLedger, user: Caller, worker: Caller, chunks: int) -> str:
    created = await service.create(user, file=b"%PDF-1.4 x", file_name="doc.pdf")
    task_id = created.state.task_id
    assert (await service.claim(worker, "w1")) is not None
    await service.complete(worker, task_id, "w1", big_output("doc.pdf", chunks))
    return task_id


def legacy_success(service: TaskLedger, task_id: str, output: dict[str, Any]) -> bytes:
    """Claim and complete ``task_id`` as a version before summaries did: an event with no
    summary, and the output as any JSON encoder wrote it."""
    data = json.dumps(output).encode()
    now = datetime.now(UTC)
    envelope = Envelope(recorded_at=now, actor=Actor(key_id=None, role="worker"))
    handler = service.store.handler
    lease = now + timedelta(minutes=5)
    handler.execute(ClaimTask(task_id=task_id, at=now, worker_id="w", lease_until=lease), envelope)
    handler.execute(
        CompleteTask(task_id=task_id, at=now, worker_id="w", output=blob_ref(data)),
        envelope,
        blobs=[data],
    )
    return data


LINKS = Linker("http://testserver.local", lambda state: FileLinks("input", None))


def task_json(view: Any, include_chunks: bool) -> dict[str, Any]:
    return json.loads(encode(render_view(view, LINKS, include_chunks)))


@pytest.mark.anyio
async def test_an_output_is_recorded_with_its_summary(service):
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    task_id = await succeeded_task(service, user, worker, chunks=4)
    (event,) = [e.event for e in (await service.history(user, task_id)).events if e.version == 3]
    assert isinstance(event, Succeeded)
    expected = summarise(check_output(big_output("doc.pdf", 4), "doc.pdf"))
    assert (
        event.summary
        == expected
        == OutputSummary(
            file_name="doc.pdf",
            page_count=3,
            pdf_url="https://elsewhere.example/doc.pdf",
            chunks=4,
        )
    )
    assert (await service.get(user, task_id)).state.output_summary == expected


@pytest.mark.anyio
async def test_reads_without_chunks_never_read_an_output(service):
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    ids = [await succeeded_task(service, user, worker, chunks=3) for _ in range(3)]
    counted = Counted(service.store.log)
    service.store.log = counted
    listed = await service.list_tasks(user)
    one = await service.get(user, ids[0], include_chunks=False)
    as_of = await service.get(user, ids[0], as_of_version=3, include_chunks=False)
    assert counted.reads == []
    assert all(view.output is None for view in [*listed, one, as_of])
    with_chunks = await service.get(user, ids[0])
    assert counted.reads != [] and with_chunks.output is not None
    assert len(with_chunks.output["chunks"]) == 3
    # The answer without chunks is the answer with them, less the chunks.
    full, bare = task_json(with_chunks, True), task_json(one, False)
    assert bare["output"] == {**full["output"], "chunks": []}


@pytest.mark.anyio
async def test_an_update_answer_reads_no_output(service):
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    task_id = await succeeded_task(service, user, worker, chunks=2)
    counted = Counted(service.store.log)
    service.store.log = counted
    updated = await service.update(user, task_id, {"expires_in": 60})
    assert updated.state.status == "Starting" and updated.output is None
    assert counted.reads == []
    assert task_json(updated, True)["output"]["page_count"] == 3


@pytest.mark.anyio
async def test_an_output_from_before_summaries_is_summarised_once_per_process(service):
    user = key(service, "alice", "user")
    created = await service.create(user, file=b"hello", file_name="a.txt")
    task_id = created.state.task_id
    stored = chunkr_output("a.txt")
    del stored["file_name"]  # written before outputs were checked: the task's name stands
    stored["page_count"] = 7
    legacy_success(service, task_id, stored)
    counted = Counted(service.store.log)
    service.store.log = counted
    first = await service.get(user, task_id, include_chunks=False)
    assert first.state.output_summary == OutputSummary(
        file_name="a.txt", page_count=7, pdf_url=None, chunks=1
    )
    assert len(counted.reads) == 1
    again = await service.list_tasks(user)
    assert len(counted.reads) == 1, "worked out once, then kept"
    assert again[0].state.output_summary == first.state.output_summary
    full = await service.get(user, task_id)
    assert full.output is not None and full.output["chunks"] == stored["chunks"]
    body = task_json(full, True)["output"]
    assert (body["file_name"], body["page_count"], body["chunks"]) == (
        "a.txt",
        7,
        stored["chunks"],
    )


@pytest.mark.anyio
async def test_chunks_are_answered_as_stored(service):
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    task_id = await succeeded_task(service, user, worker, chunks=2)
    seen: list[bytes] = []

    def present(view: Any) -> bytes:
        assert isinstance(view.output["chunks"], msgspec.Raw)
        rendered = encode(render_view(view, LINKS, True))
        seen.append(rendered)
        return rendered

    await service.get_as(user, task_id, present)
    decoded = await service.get(user, task_id)
    assert seen == [encode(render_view(decoded, LINKS, True))]


@pytest.mark.anyio
async def test_a_list_with_chunks_past_the_cap_is_refused_with_the_limit_that_fits(service):
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    ids = [await succeeded_task(service, user, worker, chunks=1) for _ in range(4)]
    size = (await service.get(user, ids[0], include_chunks=False)).state.output
    assert size is not None and 2 * size.size <= 2000 < 3 * size.size
    counted = Counted(service.store.log)
    service.store.log = counted
    with pytest.raises(ListTooLarge, match=r"\(2000 bytes\): ask for fewer tasks \(limit=2 "):
        await service.list_tasks(user, include_chunks=True)
    assert counted.reads == [], "refused before any output is read"
    page = await service.list_tasks(user, include_chunks=True, limit=2)
    assert [len(v.output["chunks"]) for v in page if v.output] == [1, 1]
    second = await service.list_tasks(user, include_chunks=True, limit=2, page=2)
    assert [v.state.task_id for v in page + second] == list(reversed(ids))
    # Without chunks the cap does not apply.
    assert len(await service.list_tasks(user)) == 4


@pytest.mark.anyio
async def test_one_task_over_the_cap_is_still_listed_alone(service):
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    big = await succeeded_task(service, user, worker, chunks=30)
    small = await service.create(user, file=b"hello", file_name="a.txt")  # no output
    listed = await service.list_tasks(user, include_chunks=True, limit=1, page=2)
    assert [v.state.task_id for v in listed] == [big]
    assert listed[0].output is not None and len(listed[0].output["chunks"]) == 30
    both = await service.list_tasks(user, include_chunks=True)
    assert [v.state.task_id for v in both] == [small.state.task_id, big]


@pytest.mark.anyio
async def test_an_answer_kept_before_summaries_renders_as_it_did(service):
    """An Idempotency-Key's outcome stored by a release before summaries holds the state with
    no summary and the whole output: replayed, it answers the same Task JSON."""
    user, worker = key(service, "alice", "user"), key(service, "pool", "worker")
    task_id = await succeeded_task(service, user, worker, chunks=2)
    now = await service.get(user, task_id)
    assert now.output is not None
    old = TaskView(state=msgspec.structs.replace(now.state, output_summary=None), output=now.output)
    kept = msgspec.json.decode(msgspec.json.encode(old), type=TaskView)
    assert task_json(kept, True) == task_json(now, True)
    assert task_json(kept, False) == task_json(now, False)


@pytest.mark.anyio
async def test_a_list_with_inputs_as_data_urls_counts_them_against_the_cap(service):
    """``base64_urls`` puts each input in the answer (4/3 of its size as base64): a list of
    large inputs is refused as a list of large outputs is, before any input is read."""
    user = key(service, "alice", "user")
    big = b"x" * 900  # 1200 bytes as base64; the cap here is 2000
    ids = [
        (await service.create(user, file=big, file_name="a.txt")).state.task_id for _ in range(3)
    ]
    counted = Counted(service.store.log)
    service.store.log = counted
    with pytest.raises(ListTooLarge, match=r"with base64_urls \(2000 bytes\).*\(limit=1 "):
        await service.list_as(user, lambda view: view, inline_inputs=True)
    assert counted.reads == [], "refused before any input is read"
    page = await service.list_as(user, lambda view: view, inline_inputs=True, limit=1)
    assert [v.state.task_id for v in page] == [ids[-1]]
    # Links instead of data: URLs put no input in the answer: no cap.
    assert len(await service.list_as(user, lambda view: view)) == 3
