"""A table of bad requests, each with the status and plain-text message it must get; then proof
that none of them wrote anything and the server is still well."""

from __future__ import annotations

import base64
import json

import pytest

from ledger.log import task_id_of

GOOD_FILE = base64.b64encode(b"hi").decode()
NOT_A_UUID = "not-a-uuid"
DEEP = 5000
TABLES = ("events", "blobs", "blob_refs", "tasks", "idempotency_outcomes")


def body(**fields) -> bytes:
    return json.dumps({"file": GOOD_FILE, **fields}).encode()


def case(id, method, path, status, message, *, content=None, headers=None, marks=()):
    return pytest.param(method, path, content, headers or {}, status, message, id=id, marks=marks)


CREATE = "/task/parse"
CASES = [
    # -- the body as a whole
    case("malformed-json", "POST", CREATE, 400, "not valid JSON", content=b'{"file": "aGk=",,}'),
    case("truncated-json", "POST", CREATE, 400, "truncated", content=b'{"file": "aGk='),
    case("not-utf8", "POST", CREATE, 400, "not valid JSON", content=b"\xff\xfe{}"),
    case("empty-body", "POST", CREATE, 400, "Request body is empty", content=b""),
    case("body-array", "POST", CREATE, 400, "Request body must be a JSON object", content=b"[]"),
    case("body-string", "POST", CREATE, 400, "Request body must be a JSON object", content=b'"x"'),
    case("body-null", "POST", CREATE, 400, "Request body must be a JSON object", content=b"null"),
    case("body-number", "POST", CREATE, 400, "Request body must be a JSON object", content=b"42"),
    # -- file
    case("missing-file", "POST", CREATE, 400, "missing required field `file`", content=b"{}"),
    case("file-not-string", "POST", CREATE, 400, "$.file", content=b'{"file": 1}'),
    case("file-null", "POST", CREATE, 400, "$.file", content=b'{"file": null}'),
    case("invalid-base64", "POST", CREATE, 400, "=Invalid base64 data", content=b'{"file": "!!!"}'),
    case("bad-padding", "POST", CREATE, 400, "=Invalid base64 data", content=b'{"file": "aGk"}'),
    case(
        "file-url-private",
        "POST",
        CREATE,
        400,
        "=Could not download the file: 127.0.0.1 is a private address (loopback); the server"
        " refuses such URLs unless started with --allow-private-fetch",
        content=b'{"file": "https://127.0.0.1/a.pdf"}',
    ),
    case(
        "file-url-ftp",
        "POST",
        CREATE,
        400,
        "=Invalid base64 data",
        content=b'{"file": "ftp://127.0.0.1/a.pdf"}',
    ),
    case(
        "data-url-not-base64",
        "POST",
        CREATE,
        400,
        "Invalid data URL",
        content=b'{"file": "data:text/plain,hello"}',
    ),
    case(
        "data-url-bad-base64",
        "POST",
        CREATE,
        400,
        "=Invalid base64 data",
        content=b'{"file": "data:text/plain;base64,!!!"}',
    ),
    case("empty-file", "POST", CREATE, 400, "=File is empty", content=b'{"file": ""}'),
    # -- configuration types and ranges
    case("expires_in-string", "POST", CREATE, 400, "$.expires_in", content=body(expires_in="x")),
    case("expires_in-negative", "POST", CREATE, 400, "$.expires_in", content=body(expires_in=-1)),
    case(
        "high_resolution-yes",
        "POST",
        CREATE,
        400,
        "$.high_resolution",
        content=body(high_resolution="yes"),
    ),
    case(
        "target_length--1",
        "POST",
        CREATE,
        400,
        "$.chunk_processing.target_length",
        content=body(chunk_processing={"target_length": -1}),
    ),
    case(
        "target_length-huge",
        "POST",
        CREATE,
        400,
        "$.chunk_processing.target_length",
        content=body(chunk_processing={"target_length": 2**40}),
    ),
    case(
        "ocr_strategy-unknown",
        "POST",
        CREATE,
        400,
        "$.ocr_strategy",
        content=body(ocr_strategy="Sometimes"),
    ),
    case(
        "temperature-string",
        "POST",
        CREATE,
        400,
        "$.llm_processing.temperature",
        content=body(llm_processing={"temperature": "hot"}),
    ),
    case(
        "max_completion_tokens-negative",
        "POST",
        CREATE,
        400,
        "$.llm_processing.max_completion_tokens",
        content=body(llm_processing={"max_completion_tokens": -1}),
    ),
    case(
        "fallback_strategy-unknown",
        "POST",
        CREATE,
        400,
        "llm_processing.fallback_strategy",
        content=body(llm_processing={"fallback_strategy": {"Mode": "gpt"}}),
    ),
    case(
        "tokenizer-enum-and-string",
        "POST",
        CREATE,
        400,
        "chunk_processing.tokenizer: expected exactly one of",
        content=body(chunk_processing={"tokenizer": {"Enum": "Word", "String": "bert"}}),
    ),
    case(
        "tokenizer-unknown-enum",
        "POST",
        CREATE,
        400,
        "chunk_processing.tokenizer.Enum: 'Sentence' is not one of",
        content=body(chunk_processing={"tokenizer": {"Enum": "Sentence"}}),
    ),
    case(
        "segment-strategy-out-of-enum",
        "POST",
        CREATE,
        400,
        "$.segment_processing.table.strategy",
        content=body(segment_processing={"table": {"strategy": "Ignore"}}),
    ),
    case(
        "segment-markdown-number",
        "POST",
        CREATE,
        400,
        "$.segment_processing.Text.markdown",
        content=body(segment_processing={"Text": {"markdown": -58800}}),
    ),
    case(
        "segment-given-twice",
        "POST",
        CREATE,
        400,
        "Table is given twice",
        content=body(segment_processing={"table": {}, "Table": {}}),
    ),
    case(
        "deeply-nested",
        "POST",
        CREATE,
        400,
        "Invalid request body",
        content=(
            f'{{"file": "{GOOD_FILE}", "segment_processing": {{"Text": '
            + '{"a": ' * DEEP
            + "1"
            + "}" * DEEP
            + "}}"
        ).encode(),
    ),
    # -- file_name (it ends up in a Content-Disposition header)
    case(
        "file_name-newline",
        "POST",
        CREATE,
        400,
        "file_name must not contain control characters",
        content=body(file_name="a\nb.txt"),
    ),
    case(
        "file_name-header-injection",
        "POST",
        CREATE,
        400,
        "file_name must not contain control characters",
        content=body(file_name="a.txt\r\nX-Injected: 1"),
    ),
    case(
        "file_name-nul",
        "POST",
        CREATE,
        400,
        "file_name must not contain control characters",
        content=body(file_name="a\x00.txt"),
    ),
    case(
        "file_name-path",
        "POST",
        CREATE,
        400,
        "file_name must be a plain file name",
        content=body(file_name="../../etc/passwd"),
    ),
    case(
        "file_name-too-long",
        "POST",
        CREATE,
        400,
        "file_name is longer than",
        content=body(file_name="a" * 300),
    ),
    case("file_name-not-string", "POST", CREATE, 400, "$.file_name", content=body(file_name=7)),
    # -- Idempotency-Key
    case(
        "idempotency-key-empty",
        "POST",
        CREATE,
        400,
        "Idempotency-Key must be",
        content=body(),
        headers={"Idempotency-Key": ""},
    ),
    case(
        "idempotency-key-too-long",
        "POST",
        CREATE,
        400,
        "Idempotency-Key must be",
        content=body(),
        headers={"Idempotency-Key": "k" * 300},
    ),
    case(
        "idempotency-key-too-long-on-cancel",
        "GET",
        "/task/{starting}/cancel",
        400,
        "Idempotency-Key must be",
        headers={"Idempotency-Key": "k" * 300},
    ),
    case(
        "idempotency-key-empty-on-update",
        "PATCH",
        "/task/{succeeded}/parse",
        400,
        "Idempotency-Key must be",
        content=b"{}",
        headers={"Idempotency-Key": ""},
    ),
    # -- PATCH bodies (on a Succeeded task, where a good body would be accepted)
    case(
        "update-malformed",
        "PATCH",
        "/task/{succeeded}/parse",
        400,
        "not valid JSON",
        content=b"{,}",
    ),
    case(
        "update-array",
        "PATCH",
        "/task/{succeeded}/parse",
        400,
        "Request body must be a JSON object",
        content=b"[1]",
    ),
    case(
        "update-no-body",
        "PATCH",
        "/task/{succeeded}/parse",
        400,
        "Request body is empty",
        content=b"",
    ),
    case(
        "update-segment-crop-out-of-enum",
        "PATCH",
        "/task/{succeeded}/parse",
        400,
        "$.segment_processing.Picture.crop_image",
        content=b'{"segment_processing": {"Picture": {"crop_image": "Some"}}}',
    ),
    case(
        "update-expires_in-string",
        "PATCH",
        "/task/{succeeded}/parse",
        400,
        "$.expires_in",
        content=b'{"expires_in": "soon"}',
    ),
    # -- list parameters
    case("page-0", "GET", "/tasks?page=0&limit=10", 400, "=page must be 1 or more"),
    case("page-negative", "GET", "/tasks?page=-1&limit=10", 400, "=page must be 1 or more"),
    case(
        "page-without-limit",
        "GET",
        "/tasks?page=2",
        400,
        "=Limit is required when page is provided",
    ),
    case("limit-0", "GET", "/tasks?limit=0", 400, "=limit must be between 1 and 1000"),
    case("limit-huge", "GET", "/tasks?limit=100000", 400, "=limit must be between 1 and 1000"),
    case("page-not-a-number", "GET", "/tasks?page=x&limit=1", 400, "page"),
    case("start-not-a-time", "GET", "/tasks?start=yesterday", 400, "start"),
    case("start-without-zone", "GET", "/tasks?start=2025-01-01T00:00:00", 400, "start"),
    case("include_chunks-not-bool", "GET", "/tasks?include_chunks=maybe", 400, "include_chunks"),
    # -- task ids and time travel
    case("get-non-uuid", "GET", f"/task/{NOT_A_UUID}", 404, "=Task not found"),
    case(
        "update-non-uuid",
        "PATCH",
        f"/task/{NOT_A_UUID}/parse",
        404,
        "=Task not found",
        content=b"{}",
    ),
    case("cancel-non-uuid", "GET", f"/task/{NOT_A_UUID}/cancel", 404, "=Task not found"),
    case("delete-non-uuid", "DELETE", f"/task/{NOT_A_UUID}", 404, "=Task not found"),
    case(
        "as_of_version-not-a-number",
        "GET",
        "/task/{starting}?as_of_version=abc",
        400,
        "as_of_version",
    ),
    case("as_of_version-0", "GET", "/task/{starting}?as_of_version=0", 400, "as_of_version"),
    case("as_of_version-beyond", "GET", "/task/{starting}?as_of_version=99", 400, "as_of_version"),
]


@pytest.fixture(scope="module")
def targets(alice, create, ledger):
    starting = create(alice)["task_id"]
    succeeded = create(alice)["task_id"]
    ledger.succeed(succeeded)
    return {"starting": starting, "succeeded": succeeded}


@pytest.fixture(scope="module")
def baseline(targets, ledger):
    """Row counts once the targets exist, before any bad request."""
    return {table: ledger.count(table) for table in TABLES}


@pytest.mark.parametrize("method, path, content, headers, status, message", CASES)
def test_bad_request_is_refused(
    alice, targets, baseline, method, path, content, headers, status, message
):
    response = alice.request(method, path.format(**targets), content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/plain")
    if message.startswith("="):
        assert response.text == message[1:]
    else:
        assert message in response.text


def test_nothing_was_written_and_the_server_is_well(server, alice, targets, baseline, ledger):
    # Runs after the table (file order): every bad request above appended nothing at all.
    assert {table: ledger.count(table) for table in TABLES} == baseline
    # No partial streams: every stream is gapless from 1 and opens with task_created.
    streams: dict[str, list[tuple[int, str]]] = {}
    for stream_id, version, type_ in ledger.query(
        "SELECT stream_id, version, type FROM events ORDER BY stream_id, version"
    ):
        streams.setdefault(stream_id, []).append((version, type_))
    for stream_id, events in streams.items():
        assert [v for v, _ in events] == list(range(1, len(events) + 1)), stream_id
        assert events[0][1] == "task_created", stream_id
        assert ledger.version(task_id_of(stream_id)) == len(events)
    # The targets are as they were.
    assert alice.get(f"/task/{targets['starting']}").json()["status"] == "Starting"
    assert alice.get(f"/task/{targets['succeeded']}").json()["status"] == "Succeeded"

    with server.client(None) as anonymous:
        assert anonymous.get(f"{server.url}/health").status_code == 200
    created = alice.post("/task/parse", json={"file": GOOD_FILE, "file_name": "ok.txt"})
    assert created.status_code == 200
    assert created.json()["status"] == "Starting"
    assert ledger.count("events") == baseline["events"] + 1
    assert ledger.event_types(created.json()["task_id"]) == ["task_created"]


@pytest.mark.parametrize("name", ["a\x85b.txt", "a\x9bb.txt"])
def test_file_name_with_a_c1_control_character_is_refused(alice, name):
    # Kept out of the table: if the server wrongly accepts it, it appends an event.
    response = alice.post("/task/parse", content=body(file_name=name))
    assert response.status_code == 400
    assert response.text.startswith("file_name must not contain control characters")
    assert f"(U+{ord(name[1]):04X})" in response.text
