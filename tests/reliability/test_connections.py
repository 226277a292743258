"""No client can hold connections until others are denied (api/connections.py): a connection
that has not sent a whole request head within ``serve --header-timeout`` is closed; at ``serve
--max-connections`` a new connection takes the slot of the longest-waiting one, and is refused
with 503 and ``Retry-After`` only when every slot holds a request in progress; the open-file
limit is raised to its hard limit and the cap kept under it; and none of this cuts an SSE stream
or a long-poll claim.

Every test runs a real ``taskledger serve`` and speaks to it over raw sockets. Waits are polls
with generous deadlines (the timeouts here are 1 s; a deadline is several times that), never a
tight wall-clock assertion.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_support import FILE, add_key

from tests.server import Server, free_port
from tests.support import wait_for

#: How long past a 1 s timeout a connection may take to be closed before the test fails: a
#: loaded two-core machine, never a measurement.
SLACK = 9.0


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def head(path: str, key: str | None = None) -> bytes:
    auth = f"Authorization: {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


def until_closed(socks: list[socket.socket], timeout: float) -> list[bytes]:
    """What each socket received until the server closed it (EOF or reset); fails the test if
    any is still open after ``timeout`` seconds."""
    received = {sock: b"" for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"{len(selector.get_map())} of {len(socks)} connections still open after "
                    f"{timeout} s"
                )
            for ready, _ in selector.select(min(left, 0.5)):
                sock = ready.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[sock] += data
                else:
                    selector.unregister(sock)
    finally:
        selector.close()
    return [received[sock] for sock in socks]


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


def read_head(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_a_connection_without_a_whole_request_head_is_closed_after_the_header_timeout(
    serve, workers
):
    """Silent connections, half a head, and a head sent a byte at a time are all closed about
    ``--header-timeout`` after they connected; with ``--workers 2`` every worker process applies
    it (the settings reach them through the environment)."""
    server = serve("--header-timeout", "1", "--workers", str(workers), "--sweep-interval", "0")
    with sockets() as opened:
        silent = [connect(server) for _ in range(4)]
        halves = [connect(server) for _ in range(4)]
        for sock in halves:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dripping = connect(server)
        opened += [*silent, *halves, dripping]
        stop = threading.Event()

        def drip() -> None:
            # A header that never ends, one byte every 0.2 s: more bytes do not reset the timer.
            with contextlib.suppress(OSError):
                dripping.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                while not stop.wait(0.2):
                    dripping.send(b"a")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            answers = until_closed([*silent, *halves, dripping], timeout=1 + SLACK)
        finally:
            stop.set()
            dripper.join(5)
        assert answers[: len(silent)] == [b""] * len(silent), "a silent connection got an answer"
        for answer in answers[len(silent) :]:
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert answer.endswith(b"The request head did not arrive in time"), answer
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_idle_connections_past_the_cap_make_way_and_an_authenticated_get_is_answered(serve):
    """At ``--max-connections 20``, 20 silent connections and then 20 with half a head: each new
    one takes the slot of the one waiting longest (the silent ones are closed; the half heads get
    503 with Retry-After when their turn comes), so an authenticated GET is answered at once,
    without waiting for any timeout (the header timeout here is a minute)."""
    server = serve("--max-connections", "20", "--header-timeout", "60", "--sweep-interval", "0")
    key = add_key(server.db, "alice")
    with sockets() as opened:
        silent = [connect(server) for _ in range(20)]
        opened += silent
        halves = []
        for _ in range(20):
            sock = connect(server)
            sock.sendall(b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            halves.append(sock)
        opened += halves
        assert until_closed(silent, timeout=SLACK) == [b""] * 20
        assert all(is_open(sock) for sock in halves)

        response = httpx.get(f"{server.api}/tasks", headers={"Authorization": key}, timeout=5)
        assert response.status_code == 200

        # The GET took the slot of the oldest half head, which was told to come back.
        (refused,) = until_closed(halves[:1], timeout=SLACK)
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"\r\nretry-after: 1\r\n" in refused.lower()
        assert refused.endswith(b"Too many connections; retry later")
        assert all(is_open(sock) for sock in halves[1:])


def test_with_every_slot_holding_a_request_a_new_connection_gets_503_until_one_frees(serve):
    """At ``--max-connections 6`` with six SSE streams open (requests in progress, never made to
    give way), a new connection is refused at once with 503 and ``Retry-After``; when a stream
    closes, the next authenticated GET is answered. Requests asking for a WebSocket upgrade
    before that are answered as HTTP and give their slots back (the API has no WebSocket)."""
    server = serve("--max-connections", "6", "--sweep-interval", "0")
    key = add_key(server.db, "alice")
    for _ in range(12):
        with connect(server) as sock:
            sock.sendall(
                b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert read_head(sock).startswith(b"HTTP/1.1 401 ")
    with sockets() as streams:
        for _ in range(6):
            sock = connect(server)
            sock.sendall(head("/api/v1/events/stream", key))
            assert read_head(sock).startswith(b"HTTP/1.1 200 ")
            streams.append(sock)

        refused = httpx.get(f"{server.api}/tasks", headers={"Authorization": key}, timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.text == "Too many connections; retry later"
        assert all(is_open(sock) for sock in streams), "a stream was cut to make way"

        streams.pop().close()

        def answered() -> bool:
            got = httpx.get(f"{server.api}/tasks", headers={"Authorization": key}, timeout=5)
            return got.status_code == 200

        wait_for(answered, timeout=SLACK, what="a GET answered once a stream closed")


def test_the_timeouts_do_not_cut_an_sse_stream_or_a_long_poll_claim(serve):
    """With ``--header-timeout 1 --keep-alive 1``, while a silent connection and an idle
    keep-alive one are closed, an SSE stream and a 5 s long-poll claim opened at the same time
    run to their end: the timeouts apply to reading a request head and to idleness between
    requests, never to a request in progress."""
    server = serve("--header-timeout", "1", "--keep-alive", "1", "--sweep-interval", "0")
    user, worker = add_key(server.db, "alice"), add_key(server.db, "pool", "worker")
    claim: dict[str, object] = {}

    def long_poll() -> None:
        started = time.monotonic()
        with server.client(worker) as client:
            answer = client.post("/worker/claim", json={"worker_id": "w1", "wait_seconds": 5})
        claim.update(status=answer.status_code, seconds=time.monotonic() - started)

    with sockets() as opened:
        stream = connect(server)
        stream.sendall(head("/api/v1/events/stream", user))
        assert read_head(stream).startswith(b"HTTP/1.1 200 ")
        silent = connect(server)
        kept = connect(server)
        kept.sendall(head("/health"))
        assert read_head(kept).startswith(b"HTTP/1.1 200 ")
        opened += [stream, silent, kept]
        poller = threading.Thread(target=long_poll)
        poller.start()

        silent_got, kept_got = until_closed([silent, kept], timeout=1 + SLACK)
        assert silent_got == b""
        assert b"HTTP/" not in kept_got  # at most the rest of the /health answer
        poller.join(60)
        assert claim["status"] == 204, claim  # it waited its 5 s and found nothing
        assert isinstance(claim["seconds"], float) and claim["seconds"] >= 4.5, claim

        with server.client(user) as client:
            task_id = client.post("/task/parse", json={"file": FILE}).json()["task_id"]
        assert is_open(stream)
        stream.setblocking(True)
        stream.settimeout(10)
        seen = b""
        while task_id.encode() not in seen:
            chunk = stream.recv(65536)
            assert chunk, "the SSE stream was closed"
            seen += chunk
        assert b"event: task_created" in seen


def test_an_oversized_request_head_gets_431(serve):
    """A request head over 64 KiB is refused with 431 (httptools sets no limit of its own)."""
    server = serve("--sweep-interval", "0")
    with sockets() as opened:
        sock = connect(server)
        opened.append(sock)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ")
        with contextlib.suppress(OSError):  # the server may answer before all of it is sent
            sock.sendall(b"a" * 200_000 + b"\r\n\r\n")
        (answer,) = until_closed([sock], timeout=SLACK)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert answer.endswith(b"The request head is too large")
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_past_the_open_file_limit_the_cap_refuses_and_the_server_keeps_answering(tmp_path: Path):
    """The issue's case, scaled down: a server whose open-file limit is 200 (hard limit 300)
    raises it to 300 and caps its connections under that; 400 silent connections (more than its
    limit) then cannot keep an authenticated GET from being answered. Without the cap the server
    runs out of descriptors and the GET is never answered. A ``--max-connections`` the limit
    cannot hold is refused at start."""
    too_many = Server(tmp_path / "refused.db", "--max-connections", "1000", file_limit=(300, 300))
    try:
        with pytest.raises(RuntimeError, match="--max-connections"):
            too_many.start()
    finally:
        too_many.stop()

    server = Server(tmp_path / "ledger.db", "--sweep-interval", "0", file_limit=(200, 300))
    server.start()
    try:
        assert server.proc is not None
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        assert line.split()[3:5] == ["300", "300"], line
        key = add_key(server.db, "alice")
        with sockets() as opened:
            for _ in range(400):
                opened.append(connect(server))
            response = httpx.get(f"{server.api}/tasks", headers={"Authorization": key}, timeout=10)
            assert response.status_code == 200
            descriptors = len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))
            assert descriptors < 300, descriptors
    finally:
        server.stop()


async def big_answer(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """An ASGI app: ``/big`` answers 8 MiB in 64 KiB pieces, anything else ``ok``."""
    if scope["type"] != "http":
        return
    big = scope["path"] == "/big"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(128 if big else 0):
        await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_client_that_stops_reading_its_answer_gives_its_slot_back(monkeypatch):
    """A response the client stops reading (its window closed, the server's output blocked)
    would hold its slot, and its descriptor, for good: after ``SEND_STALL_SECONDS`` (1 s here;
    30 s served) without a byte moving, the connection is aborted and the next client is served.
    The protocol ``taskledger serve`` runs, under uvicorn in a thread of this process (the
    constant patched), serving an app whose answer is 8 MiB."""
    import uvicorn

    from api import connections
    from api.settings import Settings

    monkeypatch.setattr(connections, "SEND_STALL_SECONDS", 1.0)
    settings = Settings(db_path=Path("unused.db"), max_connections=1)
    port = free_port()
    config = uvicorn.Config(
        big_answer,
        host="127.0.0.1",
        port=port,
        http=connections.protocol_for(settings),
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=10, what="uvicorn to start")
        url = f"http://127.0.0.1:{port}/small"
        with contextlib.closing(socket.socket()) as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", port))
            stuck.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.3)  # the answer fills every buffer on the way, and stops
            assert httpx.get(url, timeout=5).status_code == 503  # its slot is still taken
            wait_for(
                lambda: httpx.get(url, timeout=5).status_code == 200,
                timeout=1 + SLACK,
                what="the stuck connection to be aborted and its slot given back",
            )
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := stuck.recv(1 << 20):
                    received += len(chunk)
            assert received < 128 * 65536, "the whole answer went through"
    finally:
        server.should_exit = True
        thread.join(10)
