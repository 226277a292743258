"""The official chunkr-ai 0.3.7 SDK, unchanged, against ``taskledger serve``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from chunkr_ai import Chunkr
from chunkr_ai.models import ChunkProcessing, Configuration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(real_server):
    """The SDK speaks to a URL over the network (httpx): these tests stay on a real
    ``taskledger serve`` process, as they are about compatibility over real HTTP."""
    return real_server


@pytest.fixture
def chunkr(server, user_keys, monkeypatch):
    # The SDK calls load_dotenv(override=True): a stray .env would point it elsewhere.
    assert not (REPO / ".env").exists(), "a .env in the repository would override CHUNKR_URL"
    monkeypatch.setenv("CHUNKR_URL", server.api)
    monkeypatch.setenv("CHUNKR_API_KEY", user_keys["alice"])
    client = Chunkr(url=server.api, api_key=user_keys["alice"])
    assert client.url == server.api
    yield client
    client.close()


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("A short text file.\nSecond line.\n")
    return path


def test_create_task_answers_a_starting_task(chunkr, server, text_file, alice):
    task = chunkr.create_task(
        text_file, Configuration(chunk_processing=ChunkProcessing(target_length=100))
    )
    assert task.status == "Starting"
    assert task.message == "Task queued"
    assert task.task_url == f"{server.api}/task/{task.task_id}"
    assert task.configuration.chunk_processing.target_length == 100
    assert task.configuration.chunk_processing.ignore_headers_and_footers is True
    assert task.output is None or task.output.chunks == []
    # The server really holds it, with the file the SDK sent (as base64).
    got = alice.get(f"/task/{task.task_id}")
    assert got.status_code == 200
    assert got.json()["output"]["file_name"] == "notes.txt"
    raw = alice.get(f"/task/{task.task_id}/input")
    assert raw.content == text_file.read_bytes()


def test_get_task_returns_it(chunkr, text_file):
    created = chunkr.create_task(text_file)
    got = chunkr.get_task(created.task_id)
    assert got.task_id == created.task_id
    assert got.status == "Starting"
    assert got.created_at == created.created_at


def test_cancel_task_then_get_task_is_cancelled(chunkr, text_file):
    task = chunkr.create_task(text_file)
    chunkr.cancel_task(task.task_id)
    got = chunkr.get_task(task.task_id)
    assert got.status == "Cancelled"
    assert got.message == "Task cancelled"


def test_cancel_task_of_a_cancelled_task_raises_400(chunkr, text_file):
    task = chunkr.create_task(text_file)
    chunkr.cancel_task(task.task_id)
    with pytest.raises(httpx.HTTPStatusError) as info:
        chunkr.cancel_task(task.task_id)
    assert info.value.response.status_code == 400


def test_get_task_of_a_succeeded_task_parses_the_chunks(chunkr, text_file, ledger):
    task = chunkr.create_task(text_file)
    output = ledger.succeed(task.task_id, file_name="notes.txt")
    got = chunkr.get_task(task.task_id)
    assert got.status == "Succeeded"
    assert got.finished_at is not None
    assert [c.chunk_id for c in got.output.chunks] == [c["chunk_id"] for c in output["chunks"]]
    segment = got.output.chunks[0].segments[0]
    assert segment.segment_type == "Text"
    assert segment.content == output["chunks"][0]["segments"][0]["content"]
    assert segment.bbox.width == 100.0
    assert (got.output.file_name, got.output.page_count) == ("notes.txt", 1)


def test_the_sdk_reads_signed_links_and_data_urls(chunkr, tmp_path, ledger):
    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    task = chunkr.create_task(pdf)
    ledger.succeed(task.task_id, file_name="paper.pdf")
    got = chunkr.get_task(task.task_id)
    assert got.status == "Succeeded"
    # Presigned, as Chunkr's: fetched with no key.
    assert httpx.get(got.configuration.input_file_url).content == pdf.read_bytes()
    assert got.output.pdf_url is not None
    assert httpx.get(got.output.pdf_url).content == pdf.read_bytes()
    inline = chunkr.get_task(task.task_id, base64_urls=True)
    assert inline.output.pdf_url.startswith("data:application/pdf;base64,")
    assert inline.configuration.input_file_url == inline.output.pdf_url
    assert len(inline.output.chunks) == 1


def test_poll_follows_task_url_to_the_end(chunkr, text_file, ledger):
    task = chunkr.create_task(text_file)
    ledger.succeed(task.task_id)
    done = task.poll()
    assert done.status == "Succeeded"
    assert len(done.output.chunks) == 1


def test_update_task_of_a_succeeded_task(chunkr, text_file, ledger):
    task = chunkr.create_task(
        text_file, Configuration(chunk_processing=ChunkProcessing(target_length=100))
    )
    ledger.succeed(task.task_id)
    updated = chunkr.update_task(
        task.task_id, Configuration(chunk_processing=ChunkProcessing(target_length=64))
    )
    assert updated.task_id == task.task_id
    assert updated.status == "Starting"
    assert updated.message == "Task queued for update"
    assert updated.configuration.chunk_processing.target_length == 64
    assert updated.configuration.chunk_processing.ignore_headers_and_footers is True
    assert chunkr.get_task(task.task_id).configuration.chunk_processing.target_length == 64


def test_update_task_of_a_starting_task_raises_400(chunkr, text_file):
    task = chunkr.create_task(text_file)
    with pytest.raises(httpx.HTTPStatusError) as info:
        chunkr.update_task(task.task_id, Configuration(high_resolution=False))
    assert info.value.response.status_code == 400
    assert info.value.response.text == "Task cannot be updated: status is Starting"


def test_delete_task_then_get_task_raises_404(chunkr, text_file):
    task = chunkr.create_task(text_file)
    chunkr.cancel_task(task.task_id)
    chunkr.delete_task(task.task_id)
    with pytest.raises(httpx.HTTPStatusError) as info:
        chunkr.get_task(task.task_id)
    assert info.value.response.status_code == 404
    assert info.value.response.text == "Task not found"


def test_a_bad_key_raises_401(server, text_file, monkeypatch):
    monkeypatch.setenv("CHUNKR_URL", server.api)
    monkeypatch.setenv("CHUNKR_API_KEY", "tlk_000000000000_nope")
    client = Chunkr(url=server.api, api_key="tlk_000000000000_nope")
    try:
        with pytest.raises(httpx.HTTPStatusError) as info:
            client.create_task(text_file)
        assert info.value.response.status_code == 401
    finally:
        client.close()


def test_a_string_tokenizer_and_a_table_config_round_trip_through_the_sdk(chunkr, text_file):
    from chunkr_ai.models import (
        GenerationConfig,
        GenerationStrategy,
        SegmentFormat,
        SegmentProcessing,
        TokenizerType,
    )

    sent = Configuration(
        chunk_processing=ChunkProcessing(
            target_length=64, tokenizer=TokenizerType(string_value="bert-base-uncased")
        ),
        segment_processing=SegmentProcessing(
            table=GenerationConfig(format=SegmentFormat.HTML, strategy=GenerationStrategy.AUTO)
        ),
    )
    created = chunkr.create_task(text_file, sent)
    got = chunkr.get_task(created.task_id)
    tokenizer = got.configuration.chunk_processing.tokenizer
    assert (tokenizer.string_value, tokenizer.enum_value) == ("bert-base-uncased", None)
    table = got.configuration.segment_processing.table
    assert (table.format, table.strategy) == (SegmentFormat.HTML, GenerationStrategy.AUTO)
    # Chunkr's defaults for what was not sent: the Table's own, and every other type's.
    assert (table.crop_image.value, table.extended_context) == ("Auto", False)
    picture = got.configuration.segment_processing.picture
    assert (picture.crop_image.value, picture.strategy, picture.format) == (
        "All",
        GenerationStrategy.AUTO,
        SegmentFormat.MARKDOWN,
    )
