"""The output contract (api/output.py): a worker's output is checked where it enters, so every
stored output is one the chunkr-ai SDK parses. A refused output is a 400 naming the JSON path of
the first problem, and nothing is appended: the task stays Processing, under the same lease."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from chunkr_ai.api.configuration import OutputResponse
from chunkr_ai.api.task_response import TaskResponse

from api.composition import close_service, open_service
from api.keys import create_key
from api.output import check_output
from api.refusals import BadRequest
from api.service import TaskLedger
from api.settings import settings_for
from tests.support import chunkr_output

Mutation = Callable[[dict[str, Any]], None]


def segment(output: dict[str, Any], n: int = 0) -> dict[str, Any]:
    return output["chunks"][0]["segments"][n]


def two_segments(output: dict[str, Any]) -> None:
    output["chunks"][0]["segments"].append(copy.deepcopy(segment(output)))


def second_segment(change: Mutation) -> Mutation:
    def mutate(output: dict[str, Any]) -> None:
        two_segments(output)
        change(segment(output, 1))

    return mutate


PATH = "$.chunks[0].segments[0]"

#: (id, what is done to a good output, the 400's body)
BAD: list[tuple[str, Mutation, str]] = [
    (
        "text null",
        lambda o: segment(o).update(text=None),
        f"Invalid output: Expected `str`, got `null` - at `{PATH}.text`",
    ),
    (
        "content null",
        lambda o: segment(o).update(content=None),
        f"Invalid output: Expected `str`, got `null` - at `{PATH}.content`",
    ),
    (
        "html null in the second segment",
        second_segment(lambda s: s.update(html=None)),
        "Invalid output: Expected `str`, got `null` - at `$.chunks[0].segments[1].html`",
    ),
    (
        "markdown null",
        lambda o: segment(o).update(markdown=None),
        f"Invalid output: Expected `str`, got `null` - at `{PATH}.markdown`",
    ),
    (
        "ocr item without bbox",
        lambda o: segment(o).update(ocr=[{"text": "hello", "confidence": 0.9}]),
        f"Invalid output: Object missing required field `bbox` - at `{PATH}.ocr[0]`",
    ),
    (
        "ocr text null",
        lambda o: segment(o).update(
            ocr=[{"bbox": {"left": 0, "top": 0, "width": 1, "height": 1}, "text": None}]
        ),
        f"Invalid output: Expected `str`, got `null` - at `{PATH}.ocr[0].text`",
    ),
    (
        "segment without bbox",
        lambda o: segment(o).pop("bbox"),
        f"Invalid output: Object missing required field `bbox` - at `{PATH}`",
    ),
    (
        "bad segment_type",
        lambda o: segment(o).update(segment_type="Paragraph"),
        f"Invalid output: Invalid enum value 'Paragraph' - at `{PATH}.segment_type`",
    ),
    (
        "negative page_number",
        lambda o: segment(o).update(page_number=-1),
        f"Invalid output: Expected `int` >= 0 - at `{PATH}.page_number`",
    ),
    (
        "page_number past u32",
        lambda o: segment(o).update(page_number=2**32),
        f"Invalid output: Expected `int` <= 4294967295 - at `{PATH}.page_number`",
    ),
    (
        "chunk_length missing",
        lambda o: o["chunks"][0].pop("chunk_length"),
        "Invalid output: Object missing required field `chunk_length` - at `$.chunks[0]`",
    ),
    (
        "a string where a number is due",
        lambda o: o["chunks"][0].update(chunk_length="2"),
        "Invalid output: Expected `int`, got `str` - at `$.chunks[0].chunk_length`",
    ),
    (
        "a string for a float",
        lambda o: segment(o)["bbox"].update(width="100"),
        f"Invalid output: Expected `float`, got `str` - at `{PATH}.bbox.width`",
    ),
    (
        "a float for a count",
        lambda o: o.update(page_count=1.0),
        "Invalid output: Expected `int | null`, got `float` - at `$.page_count`",
    ),
    (
        "a boolean for a number",
        lambda o: segment(o).update(page_height=True),
        f"Invalid output: Expected `float`, got `bool` - at `{PATH}.page_height`",
    ),
    (
        "chunks missing",
        lambda o: o.pop("chunks"),
        "Invalid output: Object missing required field `chunks`",
    ),
    (
        "segments not a list",
        lambda o: o["chunks"][0].update(segments={}),
        "Invalid output: Expected `array`, got `object` - at `$.chunks[0].segments`",
    ),
]


def bad_output(mutate: Mutation) -> dict[str, Any]:
    output = chunkr_output("a.txt")
    mutate(output)
    return output


@pytest.mark.parametrize("mutate, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_output_is_refused_naming_where(mutate, message):
    with pytest.raises(BadRequest) as refused:
        check_output(bad_output(mutate), "a.txt")
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "where, value",
    [
        ("bbox", float("nan")),
        ("bbox", float("inf")),
        ("confidence", float("-inf")),
        ("page_width", float("nan")),
    ],
)
def test_a_number_json_cannot_carry_is_refused(where, value):
    # Only a caller in this process can send one (JSON has no NaN): it would be stored as null.
    output = chunkr_output()
    if where == "bbox":
        segment(output)["bbox"]["left"] = value
        where = "bbox.left"
    else:
        segment(output)[where] = value
    with pytest.raises(BadRequest) as refused:
        check_output(output, "a.txt")
    assert str(refused.value) == f"Invalid output: Expected a finite number - at `{PATH}.{where}`"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: segment(o).update(text="half \ud800 a pair"),
        lambda o: o.update(page_count="\ud800"),  # msgspec meets it before the type
        lambda o: o.update({"\ud800": 1}),
        lambda o: o.update(extracted_json={"note": "\udfff"}),
    ],
    ids=["in a string", "in a number's place", "as a key", "in extracted_json"],
)
def test_a_lone_surrogate_is_refused_not_a_server_error(mutate):
    # Only a caller in this process can send one (a JSON body cannot): it cannot be stored.
    with pytest.raises(BadRequest) as refused:
        check_output(bad_output(mutate), "a.txt")
    assert str(refused.value) == "Invalid output: a string is not valid Unicode (a lone surrogate)"


def test_the_normal_form_fills_chunkrs_fields_and_drops_unknown_ones():
    output = chunkr_output("a.txt")
    del output["file_name"], output["page_count"], output["pdf_url"]
    output["mystery"] = {"x": 1}
    output["chunks"][0]["colour"] = "red"
    segment(output)["shade"] = 3

    full = check_output(output, "from-the-task.txt")

    assert set(full) == {"chunks", "file_name", "page_count", "pdf_url", "extracted_json"}
    assert full["file_name"] == "from-the-task.txt"
    assert (full["page_count"], full["pdf_url"], full["extracted_json"]) == (None, None, None)
    chunk = full["chunks"][0]
    assert set(chunk) == {"chunk_id", "chunk_length", "segments", "embed"}
    seg = chunk["segments"][0]
    assert "shade" not in seg
    assert (seg["html"], seg["markdown"]) == ("", "")
    assert (seg["llm"], seg["image"], seg["ocr"], seg["confidence"]) == (None, None, [], None)
    assert seg["text"] == seg["content"] == "hello, ledger"
    parsed = OutputResponse.model_validate(full)
    assert parsed.file_name == "from-the-task.txt"


def test_an_output_file_name_is_kept_even_null():
    output = chunkr_output("renamed.txt")
    assert check_output(output, "a.txt")["file_name"] == "renamed.txt"
    output["file_name"] = None
    assert check_output(output, "a.txt")["file_name"] is None


def test_the_fields_only_the_sdk_knows_are_kept_when_given_and_absent_otherwise():
    bbox = {"left": 1.0, "top": 2.0, "width": 3.0, "height": 4.0}
    ocr = [{"bbox": bbox, "text": "A1", "confidence": None}]
    output = chunkr_output()
    segment(output).update(
        segment_length=2,
        embed="hello",
        description="a greeting",
        ss_cells=[{"cell_id": "c1", "text": "hi", "range": "A1", "style": {"align": "Left"}}],
        ss_header_bbox=bbox,
        ss_header_ocr=ocr,
        ss_header_text="Greeting",
        ss_header_range="A1:A1",
        ss_range="A1:B2",
        ss_sheet_name="Sheet1",
    )
    output["chunks"][0]["content"] = "hello, ledger"
    output["mime_type"] = "text/plain"
    output["pages"] = [{"image": "", "page_number": 1, "page_height": 792, "page_width": 612}]

    full = check_output(output, "a.txt")

    seg = segment(full)
    for name, value in segment(output).items():
        if name != "ss_cells":
            assert seg[name] == value, name
    assert seg["ss_cells"][0]["style"]["align"] == "Left"
    assert full["mime_type"] == "text/plain" and full["pages"][0]["page_height"] == 792.0
    assert full["chunks"][0]["content"] == "hello, ledger"
    parsed = OutputResponse.model_validate(full)
    assert parsed.chunks[0].segments[0].ss_cells[0].cell_id == "c1"  # type: ignore[index]

    plain = check_output(chunkr_output(), "a.txt")
    assert not {"segment_length", "embed", "description", "ss_range"} & set(segment(plain))
    assert not {"mime_type", "pages"} & set(plain)
    assert "content" not in plain["chunks"][0]


# -- through the service and through HTTP: a refusal appends nothing ---------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def service(database) -> AsyncIterator[TaskLedger]:
    opened = open_service(settings_for(database, sweep_interval=0))
    yield opened
    close_service(opened)


@pytest.mark.anyio
async def test_the_service_refuses_a_bad_output_and_appends_nothing(service):
    alice = service.authenticate(create_key(service.store.records, "alice", "user")[1])
    worker = service.authenticate(create_key(service.store.records, "pool", "worker")[1])
    task = await service.create(alice, file=b"hello", file_name="a.txt")
    task_id = task.state.task_id
    assert await service.claim(worker, "w1", lease_seconds=60) is not None
    bad = bad_output(lambda o: segment(o).update(text=None))

    with pytest.raises(BadRequest, match=r"at `\$\.chunks\[0\]\.segments\[0\]\.text`"):
        await service.complete(worker, task_id, "w1", bad)

    history = (await service.history(alice, task_id)).events
    assert [type(e.event).__name__ for e in history] == ["TaskCreated", "Claimed"]
    got = await service.get(alice, task_id)
    assert got.state.status == "Processing" and got.state.worker_id == "w1"
    # The worker still holds the lease: it may heartbeat, then complete with a good output.
    assert (await service.heartbeat(worker, task_id, "w1")).state.worker_id == "w1"
    done = await service.complete(worker, task_id, "w1", chunkr_output("a.txt"))
    assert done.task.state.status == "Succeeded"
    assert done.task.output is not None and segment(done.task.output)["html"] == ""


@pytest.fixture(scope="module")
def worker(server, user_keys) -> Iterator[httpx.Client]:
    with server.client(user_keys["worker"]) as client:
        yield client


def claimed(alice: httpx.Client, worker: httpx.Client, create: Callable[..., Any]) -> str:
    task_id = create(alice)["task_id"]
    claim = worker.post("/worker/claim", json={"worker_id": "w-out", "lease_seconds": 300})
    assert claim.status_code == 200, claim.text
    assert claim.json()["task_id"] == task_id
    return task_id


@pytest.mark.parametrize("mutate, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_complete_answers_400_with_the_path_and_appends_nothing(
    alice, worker, create, ledger, mutate, message
):
    task_id = claimed(alice, worker, create)
    before = ledger.count()

    response = worker.post(
        f"/task/{task_id}/complete", json={"worker_id": "w-out", "output": bad_output(mutate)}
    )

    assert (response.status_code, response.text) == (400, message)
    assert response.headers["content-type"].startswith("text/plain")
    assert ledger.count() == before
    events = alice.get(f"/task/{task_id}/events").json()
    assert [e["type"] for e in events] == ["task_created", "claimed"]
    assert alice.get(f"/task/{task_id}").json()["status"] == "Processing"
    # Same lease: the worker can still heartbeat, then finish with a good output.
    beat = worker.post(f"/task/{task_id}/heartbeat", json={"worker_id": "w-out"})
    assert beat.status_code == 200, beat.text
    done = worker.post(
        f"/task/{task_id}/complete", json={"worker_id": "w-out", "output": chunkr_output()}
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "Succeeded"


def test_the_stored_output_is_the_normal_form_and_the_sdk_parses_it(alice, worker, create):
    task_id = claimed(alice, worker, create)
    output = chunkr_output("a.txt")
    del output["file_name"]
    segment(output)["unknown"] = [1, 2]

    done = worker.post(f"/task/{task_id}/complete", json={"worker_id": "w-out", "output": output})
    assert done.status_code == 200, done.text

    got = alice.get(f"/task/{task_id}").json()
    assert got["output"] == check_output(output, "a.txt")
    parsed = TaskResponse(**got)  # as the SDK's get_task and poll parse it
    assert parsed.output is not None and parsed.output.file_name == "a.txt"
    assert parsed.output.chunks[0].segments[0].html == ""
