"""Large outputs and large inputs against a real ``taskledger serve``: a read reads no output it
does not return, a list with chunks has a cap, and inputs are streamed from the database as
they are sent, so a client that stalls holds a buffer, not the file.

What the server reads is observed from outside, in ``/proc/<pid>/io`` (``rchar``: every byte
the process read through a system call, the database's pages included: the blob store keeps no
file mapped), and what it holds in ``/proc/<pid>/status`` (``VmRSS``). Each figure is compared
with the size of what it is about in the same test, never with a time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from chunkr_ai import Chunkr
from reliability_support import ROOT, add_key

from tests.server import Server
from tests.support import chunkr_output

MiB = 1024 * 1024
#: The pieces the server streams in (api.core.PIECE).
PIECE = 256 * 1024


# -- looking at the server process --------------------------------------------------------------


def rchar(server: Server) -> int:
    """Bytes the server process has read so far (files and sockets)."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/<pid>/io")


def rss(server: Server) -> int:
    """The server process's resident memory, in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def read_cost(server: Server, request: Any) -> tuple[int, Any]:
    """What the server read while answering ``request()``, and its answer."""
    before = rchar(server)
    answer = request()
    return rchar(server) - before, answer


# -- making tasks ------------------------------------------------------------------------------


def chunk_count(megabytes: float) -> int:
    return int(megabytes * MiB / 4300) + 1


def big_output(n: int, megabytes: float) -> dict[str, Any]:
    """A Chunkr-shaped output of about ``megabytes`` MiB, different for each ``n``."""
    output = chunkr_output("report.pdf", f"task {n}: " + "x" * 2000)
    chunk = output["chunks"][0]
    output["chunks"] = [{**chunk, "chunk_id": f"{n}-{i}"} for i in range(chunk_count(megabytes))]
    output["page_count"] = 12
    output["pdf_url"] = "https://elsewhere.example/report.pdf"
    return output


def succeeded_tasks(server: Server, user: str, count: int, megabytes: float) -> list[str]:
    """``count`` tasks of ``user``, each completed by a worker with its own large output."""
    worker_key = add_key(server.db, "pool", "worker")
    ids = []
    with server.client(user) as client, server.client(worker_key) as worker:
        for n in range(count):
            body = {"file": base64.b64encode(b"%PDF-1.4 report").decode(), "file_name": "r.pdf"}
            task_id = client.post("/task/parse", json=body).raise_for_status().json()["task_id"]
            claimed = worker.post("/worker/claim", json={"worker_id": "w1"}).raise_for_status()
            assert claimed.json()["task_id"] == task_id
            done = worker.post(
                f"/task/{task_id}/complete",
                json={"worker_id": "w1", "output": big_output(n, megabytes)},
            )
            assert done.status_code == 200, done.text
            ids.append(task_id)
    return ids


def task_with_input(server: Server, key: str, data: bytes) -> dict[str, Any]:
    body = {"file": base64.b64encode(data).decode(), "file_name": "big.bin"}
    with server.client(key) as client:
        response = client.post("/task/parse", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())


class StalledDownload:
    """A GET over a raw socket with a small receive buffer that reads the answer's head and
    the first ``first`` bytes of its body, then stops reading (a client that stalls)."""

    def __init__(self, server: Server, url: str, headers: dict[str, str], first: int) -> None:
        target = httpx.URL(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.connect(("127.0.0.1", server.port))
        lines = [f"GET {target.raw_path.decode()} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            piece = self.sock.recv(4096)
            assert piece, "the server closed the connection before its answer's head"
            head += piece
        head, _, self.body = head.partition(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        assert status.startswith("HTTP/1.1 200"), status
        found = dict(f.lower().split(": ", 1) for f in fields)
        self.length = int(found["content-length"])
        while len(self.body) < first:
            piece = self.sock.recv(first - len(self.body))
            assert piece
            self.body += piece

    def rest(self) -> bytes:
        """Read on until the server closes the connection or the body is whole."""
        self.sock.settimeout(30)
        while len(self.body) < self.length:
            piece = self.sock.recv(1024 * 1024)
            if not piece:
                break
            self.body += piece
        return self.body

    def close(self) -> None:
        self.sock.close()


def checkpoint_is_blocked(db: Path) -> bool:
    conn = sqlite3.connect(db, timeout=0)
    try:
        return bool(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
    finally:
        conn.close()


# -- reads and outputs ---------------------------------------------------------------------------


def test_a_read_without_chunks_reads_no_output(serve):
    server = serve("--sweep-interval", "0")
    alice = add_key(server.db, "alice")
    ids = succeeded_tasks(server, alice, count=6, megabytes=1)
    outputs = 6 * MiB
    with server.client(alice) as client:
        listed_cost, listed = read_cost(server, lambda: client.get("/tasks"))
        one_cost, one = read_cost(
            server, lambda: client.get(f"/task/{ids[0]}", params={"include_chunks": "false"})
        )
        # The measure sees outputs when they are read: a list with chunks reads all of them.
        chunked_cost, chunked = read_cost(
            server, lambda: client.get("/tasks", params={"include_chunks": "true"})
        )
    assert listed.status_code == one.status_code == chunked.status_code == 200
    assert chunked_cost >= outputs, "rchar sees the outputs' pages when they are read"
    assert listed_cost < outputs / 20, f"the default list read {listed_cost} bytes"
    assert one_cost < outputs / 20 / 6, f"a GET without chunks read {one_cost} bytes"
    # What they answer is what the answer with chunks says, less the chunks.
    full = {task["task_id"]: task["output"] for task in chunked.json()}
    assert [len(full[task_id]["chunks"]) for task_id in ids] == [chunk_count(1)] * 6
    for task in listed.json():
        assert task["output"] == {**full[task["task_id"]], "chunks": []}
        assert task["output"]["page_count"] == 12
    assert one.json()["output"] == {**full[ids[0]], "chunks": []}


def test_the_sdk_reads_tasks_with_large_outputs(serve, monkeypatch):
    assert not (ROOT / ".env").exists(), "a .env in the repository would override CHUNKR_URL"
    server = serve("--sweep-interval", "0")
    alice = add_key(server.db, "alice")
    (task_id,) = succeeded_tasks(server, alice, count=1, megabytes=3)
    monkeypatch.setenv("CHUNKR_URL", server.api)
    monkeypatch.setenv("CHUNKR_API_KEY", alice)
    chunkr = Chunkr(url=server.api, api_key=alice)
    try:
        full = chunkr.get_task(task_id)
        bare_cost, bare = read_cost(server, lambda: chunkr.get_task(task_id, include_chunks=False))
    finally:
        chunkr.close()
    assert full.status == bare.status == "Succeeded"
    assert len(full.output.chunks) == chunk_count(3)
    assert full.output.chunks[5].segments[0].content.startswith("task 0: xx")
    assert bare.output.chunks == []
    assert (bare.output.file_name, bare.output.page_count) == ("report.pdf", 12)
    assert (full.output.file_name, full.output.page_count) == ("report.pdf", 12)
    # The input is a PDF: pdf_url is its own signed link, in both.
    assert bare.output.pdf_url == full.output.pdf_url
    assert full.output.pdf_url.startswith(f"{server.api}/files/{task_id}/input?")
    assert bare_cost < MiB / 4, f"get_task(include_chunks=False) read {bare_cost} bytes"


def test_a_list_with_chunks_past_the_cap_is_refused_with_the_limit_that_fits(serve):
    server = serve("--sweep-interval", "0", "--max-list-output-mb", "2")
    alice = add_key(server.db, "alice")
    ids = succeeded_tasks(server, alice, count=3, megabytes=0.8)
    with server.client(alice) as client:
        refused = client.get("/tasks", params={"include_chunks": "true"})
        assert refused.status_code == 400
        assert refused.headers["content-type"].startswith("text/plain")
        assert "(2 MiB): ask for fewer tasks (limit=2 fits from here)" in refused.text
        pages = [
            client.get("/tasks", params={"include_chunks": "true", "limit": 2, "page": page})
            for page in (1, 2)
        ]
        listed = client.get("/tasks").json()
    assert [page.status_code for page in pages] == [200, 200]
    # Each page is a Chunkr list: a bare JSON array of tasks, with their chunks.
    tasks = [task for page in pages for task in page.json()]
    assert [task["task_id"] for task in tasks] == list(reversed(ids))
    assert all(len(task["output"]["chunks"]) == chunk_count(0.8) for task in tasks)
    assert [task["task_id"] for task in listed] == list(reversed(ids))


# -- inputs -------------------------------------------------------------------------------------


@pytest.fixture
def input_server(serve):
    """A server whose admin has a task with a 24 MiB input (an upload of 32 MiB of base64)."""
    server = serve("--sweep-interval", "0", "--max-body-mb", "48")
    assert server.admin_key
    data = os.urandom(24 * MiB)
    task = task_with_input(server, server.admin_key, data)
    return server, task, data


def links(server: Server, task: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The task's input by its signed link (no key) and by the authenticated route."""
    assert server.admin_key
    return [
        (task["configuration"]["input_file_url"], {}),
        (f"{task['task_url']}/input", {"Authorization": server.admin_key}),
    ]


def test_streamed_inputs_are_byte_identical_and_read_as_they_are_sent(input_server):
    server, task, data = input_server
    for url, headers in links(server, task):
        stalled = StalledDownload(server, url, headers, 64 * 1024)
        try:
            time.sleep(0.5)  # the server fills what the socket buffers take, then waits
            before = rchar(server)
            assert stalled.length == len(data)
            got = stalled.rest()
            # Bytes still to come were read from the database as they were sent: most of them.
            assert rchar(server) - before > len(data) / 2
        finally:
            stalled.close()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # Files of sizes around the pieces', by both routes.
    assert server.admin_key
    for size in (1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 7):
        small = os.urandom(size)
        made = task_with_input(server, server.admin_key, small)
        for url, headers in links(server, made):
            answer = httpx.get(url, headers=headers, timeout=60)
            assert answer.status_code == 200
            assert answer.headers["content-length"] == str(size)
            assert answer.content == small


def test_a_stalled_download_holds_a_buffer_not_the_file(input_server):
    server, task, data = input_server
    stalls = 8
    whole = httpx.get(task["configuration"]["input_file_url"], timeout=60)
    assert whole.content == data
    time.sleep(1.0)
    before = rss(server)
    stalled = [
        StalledDownload(server, url, headers, 64 * 1024)
        for _ in range(stalls // 2)
        for url, headers in links(server, task)
    ]
    try:
        time.sleep(1.5)  # each server-side download fills its buffers and waits
        held = (rss(server) - before) / stalls
        # Nothing of the database is held either: a checkpoint can truncate the WAL.
        assert not checkpoint_is_blocked(server.db)
        with server.client(server.admin_key) as client:
            assert client.get(f"/task/{task['task_id']}").status_code == 200
    finally:
        for download in stalled:
            download.close()
    assert held < len(data) / 8, f"each stalled download holds {held / MiB:.1f} MiB"


def test_deleting_a_task_cuts_its_download_short(input_server):
    server, task, data = input_server
    assert server.admin_key
    download = StalledDownload(server, *links(server, task)[0], 64 * 1024)
    try:
        with server.client(server.admin_key) as client:
            assert client.get(f"/task/{task['task_id']}/cancel").status_code == 200
            assert client.delete(f"/task/{task['task_id']}").status_code == 200
        time.sleep(0.5)
        got = download.rest()
    finally:
        download.close()
    assert len(got) < len(data), "the deleted file stopped being sent"
    assert data.startswith(got), "what was sent is the file's own bytes"
    # The link now answers 404, and the server serves on.
    assert httpx.get(links(server, task)[0][0], timeout=30).status_code == 404
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200


# -- large creates -----------------------------------------------------------------------------


class SlowUpload:
    """A create whose client sends the head and half of the body, then waits (``finish`` sends
    the rest and reads the answer's status)."""

    def __init__(self, server: Server, key: str, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        head = (
            f"POST /api/v1/task/parse HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body[: len(body) // 2])

    def finish(self) -> int:
        self.sock.sendall(self.body[len(self.body) // 2 :])
        self.sock.settimeout(60)
        answer = b""
        while b"\r\n" not in answer:
            piece = self.sock.recv(4096)
            assert piece, "closed without an answer"
            answer += piece
        self.sock.close()
        return int(answer.split(b" ", 2)[1])


def create_body(data: bytes) -> bytes:
    return json.dumps({"file": base64.b64encode(data).decode(), "file_name": "a.bin"}).encode()


def test_large_creates_past_the_cap_get_503_with_retry_after(serve):
    server = serve("--sweep-interval", "0", "--max-large-creates", "2")
    alice = add_key(server.db, "alice")
    large = create_body(os.urandom(2 * MiB))
    slow = [SlowUpload(server, alice, large) for _ in range(2)]
    time.sleep(0.5)  # both are in the server's hands, reading their bodies
    headers = {"Content-Type": "application/json"}
    with server.client(alice) as client:
        refused = client.post("/task/parse", content=large, headers=headers)
        small = client.post("/task/parse", content=create_body(b"small file"), headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert refused.text == "Too many large creates at once (2); retry shortly"
        assert small.status_code == 200, "a small create is not counted"
        assert [upload.finish() for upload in slow] == [200, 200]
        assert client.post("/task/parse", content=large, headers=headers).status_code == 200
        listed = client.get("/tasks").json()
    assert len(listed) == 4, "the refused create made no task"
