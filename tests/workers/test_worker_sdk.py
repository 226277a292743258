"""The chunkr-ai 0.3.7 SDK, unchanged, against a real server and a real reference worker.

The SDK polls with no timeout of its own, so every SDK call here runs under
``asyncio.wait_for``: a server or worker bug fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import chunkr_ai
import httpx
import pytest
from chunkr_ai import Chunkr
from chunkr_ai.models import ChunkProcessing, Configuration

SDK_TIMEOUT = 60
WORDS = [f"w{n:03d}" for n in range(430)]  # several hundred distinct words


def no_dotenv_anywhere() -> list[Path]:
    """The SDK calls load_dotenv(override=True) on every client: a stray .env above the SDK's
    package or the working directory would silently repoint it. List any that exist."""
    found = []
    for start in (Path(chunkr_ai.__file__).resolve().parent / "api", Path.cwd()):
        for folder in (start, *start.parents):
            if (folder / ".env").exists():
                found.append(folder / ".env")
    return found


@pytest.fixture
def ledger(make_ledger):
    """A server of the test's own: a worker killed at the end of a test may leave a claim
    running on its server, so servers are not shared between these tests."""
    assert no_dotenv_anywhere() == [], "a .env file would override the SDK's url and key"
    return make_ledger()


def sdk(ledger, body, timeout: float = SDK_TIMEOUT):
    """Run ``await body(client)`` with a fresh Chunkr client pointed at ``ledger``."""

    async def main():
        client = Chunkr(url=ledger.api, api_key=ledger.user_key)
        try:
            return await asyncio.wait_for(body(client), timeout)
        finally:
            await client.close()

    return asyncio.run(main())


@pytest.fixture
def essay(tmp_path) -> Path:
    path = tmp_path / "essay.txt"
    lines = [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def chunking(target_length: int) -> Configuration:
    return Configuration(chunk_processing=ChunkProcessing(target_length=target_length))


def expected_lengths(target_length: int) -> list[int]:
    full, rest = divmod(len(WORDS), target_length)
    return [target_length] * full + ([rest] if rest else [])


def test_upload_of_a_text_file_ends_succeeded_with_chunks(ledger, spawn_worker, essay):
    spawn_worker(ledger)

    task = sdk(ledger, lambda c: c.upload(essay, chunking(50)))

    assert task.status == "Succeeded"
    assert task.message == "Task succeeded"
    assert task.configuration.chunk_processing.target_length == 50
    assert task.output is not None and task.output.file_name == "essay.txt"
    assert [c.chunk_length for c in task.output.chunks] == expected_lengths(50)
    assert len(task.output.chunks) == math.ceil(len(WORDS) / 50) > 1
    assert task.content().split() == WORDS
    assert all(s.segment_type == "Text" for c in task.output.chunks for s in c.segments)
    assert [t for t in ledger.types(task.task_id) if t != "lease_extended"] == [
        "task_created",
        "claimed",
        "succeeded",
    ]


def test_update_reruns_the_task_with_the_new_configuration(ledger, spawn_worker, essay):
    spawn_worker(ledger)

    async def upload_then_update(client):
        first = await client.upload(essay, chunking(50))
        second = await client.update(first.task_id, chunking(120))
        return first, second

    first, second = sdk(ledger, upload_then_update)

    assert first.status == "Succeeded"
    assert second.task_id == first.task_id
    assert second.status == "Succeeded"
    assert second.configuration.chunk_processing.target_length == 120
    assert [c.chunk_length for c in second.output.chunks] == expected_lengths(120)
    assert len(second.output.chunks) != len(first.output.chunks)
    assert second.content().split() == WORDS
    assert [t for t in ledger.types(first.task_id) if t != "lease_extended"] == [
        "task_created",
        "claimed",
        "succeeded",
        "update_requested",
        "claimed",
        "succeeded",
    ]


def test_cancelled_task_is_never_claimed(ledger, spawn_worker, essay, tmp_path):
    async def create_and_cancel(client):
        task = await client.create_task(essay, chunking(50))
        await client.cancel_task(task.task_id)
        return await client.get_task(task.task_id)

    cancelled = sdk(ledger, create_and_cancel)  # no worker is running yet
    assert cancelled.status == "Cancelled"
    assert cancelled.message == "Task cancelled"

    spawn_worker(ledger)
    marker = tmp_path / "marker.txt"
    marker.write_text("created after the cancel, so the worker must pass over the cancelled task")
    done = sdk(ledger, lambda c: c.upload(marker, chunking(50)))
    assert done.status == "Succeeded"  # the worker is live and has drained the queue

    after = sdk(ledger, lambda c: c.get_task(cancelled.task_id))
    assert after.status == "Cancelled"
    assert after.started_at is None
    assert ledger.types(cancelled.task_id) == ["task_created", "cancelled"]


def test_deleted_task_is_not_found(ledger, spawn_worker, essay):
    spawn_worker(ledger)

    async def upload_delete_get(client):
        task = await client.upload(essay, chunking(50))
        assert task.status == "Succeeded"
        await client.delete_task(task.task_id)
        with pytest.raises(httpx.HTTPStatusError) as raised:
            await client.get_task(task.task_id)
        return task, raised.value.response

    task, response = sdk(ledger, upload_delete_get)

    assert response.status_code == 404
    assert response.text == "Task not found"
    types = ledger.types(task.task_id)
    assert types[0] == "task_created" and types[-1] == "deleted"  # the history stays
    refs = ledger.query("SELECT count(*) FROM blob_refs WHERE task_id = ?", (task.task_id,))
    assert refs == [(0,)]  # its blobs are purged


def test_upload_the_worker_cannot_process_ends_failed(ledger, spawn_worker, tmp_path):
    spawn_worker(ledger)
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")

    task = sdk(ledger, lambda c: c.upload(pdf, chunking(50)))

    assert task.status == "Failed"
    assert task.message == "Unsupported file type"
    assert task.output is None or task.output.chunks == []
    assert [t for t in ledger.types(task.task_id) if t != "lease_extended"] == [
        "task_created",
        "claimed",
        "failed",
    ]
