"""The webhook dispatcher's HTTP/1.1 client (api/poster.py), against real servers on 127.0.0.1.

Each test runs its own event loop (``asyncio.run``) holding a bare asyncio server on a free port
of 127.0.0.1 (TLS too, with a certificate the ``openssl`` command makes), whose connection
handler the test chooses: it parses requests itself (not with h11, the client's own parser),
counts the connections it accepts and the requests it reads, and answers with raw bytes, so it
can answer as receivers in the wild do (chunked, 1xx first, too long, garbage, nothing at all,
closing kept connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from api.fetch import DownloadFailed, Resolver
from api.poster import Answer, Poster, PostFailed

T = TypeVar("T")

#: Every test's loop is bounded by this: a hang fails the test instead of stalling the run.
BOUND = 30.0


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a test's loop; fail it if a socket was left for the garbage collector to close (a
    connection the poster dropped without closing: ``unclosed transport``)."""

    async def bounded() -> T:
        async with asyncio.timeout(BOUND):
            return await main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = asyncio.run(bounded())
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed
    return result


async def eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Wait (generously) until ``check()`` holds: the server's side of a socket event."""
    try:
        async with asyncio.timeout(within):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


# -- the test server ----------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    #: In the order sent, names lowercased.
    headers: list[tuple[str, str]]
    body: bytes
    #: Which accepted connection it came on (1 for the first).
    connection: int

    def header(self, name: str) -> str:
        values = [value for key, value in self.headers if key == name]
        assert len(values) == 1, (name, self.headers)
        return values[0]


async def read_request(reader: asyncio.StreamReader, connection: int) -> Received | None:
    """The next request on a connection, or None if the client ended it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ")
    assert version == "HTTP/1.1"
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon, line
        headers.append((name.lower(), value.strip()))
    lengths = [int(value) for name, value in headers if name == "content-length"]
    assert lengths, "a POST without content-length"
    body = await reader.readexactly(lengths[0])
    return Received(method, target, headers, body, connection)


def answer(
    status: int = 200,
    body: bytes = b"ok",
    headers: Sequence[tuple[str, str]] = (),
    reason: str = "Whatever",
) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


Handler = Callable[["Server", int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    handler: Handler
    port: int = 0
    #: Connections accepted, and connections whose handler has finished (closed on our side).
    accepted: int = 0
    ended: int = 0
    received: list[Received] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handler(self, self.accepted, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.ended += 1

    async def read(self, reader: asyncio.StreamReader, connection: int) -> Received | None:
        request = await read_request(reader, connection)
        if request is not None:
            self.received.append(request)
        return request

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@contextlib.asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(handler)
    listening = await asyncio.start_server(server._handle, "127.0.0.1", 0, ssl=tls)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        for writer in server.writers:
            writer.close()
        await listening.wait_closed()
        await asyncio.sleep(0)


def each(respond: Callable[[Received], bytes | None]) -> Handler:
    """A handler answering every request on a connection with ``respond(request)``; None closes
    the connection without answering, and so does an answer saying ``Connection: close``."""

    async def handler(
        server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await server.read(reader, number)) is not None:
            data = respond(request)
            if data is None:
                return
            writer.write(data)
            await writer.drain()
            if b"\r\nconnection: close\r\n" in data.split(b"\r\n\r\n")[0].lower() + b"\r\n":
                return

    return handler


def ok(body: bytes = b"ok") -> Handler:
    return each(lambda request: answer(200, body))


def resolver(table: dict[str, list[str]], asked: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(host)
        return table[host]

    return resolve


async def post(poster: Poster, url: str, body: bytes = b"{}") -> Answer:
    return await poster.post(url, [("content-type", "application/json")], body)


def kept(poster: Poster) -> int:
    return sum(len(connections) for connections in poster._idle.values())


# -- a post and its answer -----------------------------------------------------------------------


def test_a_post_arrives_as_sent_and_its_answer_comes_back() -> None:
    async def main() -> None:
        async with serving(each(lambda r: answer(201, b'{"thanks": true}', reason="Created"))) as s:
            poster = Poster(allow_private=True, user_agent="poster-test/1")
            body = b'{"type": "task.completed", "id": 7}'
            headers = [
                ("content-type", "application/json"),
                ("webhook-id", "msg_123"),
                ("webhook-signature", "v1,abc=="),
            ]
            got = await poster.post(s.url("/hooks/in?x=1&y=two%20words"), headers, body)
            assert got == Answer(201, b'{"thanks": true}')
            await poster.close()
        [request] = s.received
        assert request.method == "POST"
        assert request.target == "/hooks/in?x=1&y=two%20words"
        assert request.header("host") == f"127.0.0.1:{s.port}"
        assert request.header("user-agent") == "poster-test/1"
        assert request.header("content-length") == str(len(body))
        assert request.header("content-type") == "application/json"
        assert request.header("webhook-id") == "msg_123"
        assert request.header("webhook-signature") == "v1,abc=="
        assert request.body == body

    run(main())


def test_the_target_defaults_to_slash_and_the_host_header_is_the_urls() -> None:
    async def main() -> None:
        async with serving(each(lambda r: answer(204, b""))) as s:
            asked: list[str] = []
            poster = Poster(
                allow_private=True, resolve=resolver({"hooks.test": ["127.0.0.1"]}, asked)
            )
            assert await post(poster, f"http://hooks.test:{s.port}") == Answer(204, b"")
            assert await post(poster, f"http://hooks.test:{s.port}?only=query") == Answer(204, b"")
            await poster.close()
        assert [r.target for r in s.received] == ["/", "/?only=query"]
        assert {r.header("host") for r in s.received} == {f"hooks.test:{s.port}"}
        assert asked == ["hooks.test"]  # resolved once: the second post kept the connection

    run(main())


def test_a_3xx_is_an_answer_not_followed() -> None:
    async def main() -> None:
        redirect = answer(302, b"moved", [("Location", "/elsewhere")])
        async with serving(each(lambda r: redirect)) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url("/here")) == Answer(302, b"moved")
            await poster.close()
        assert [r.target for r in s.received] == ["/here"]

    run(main())


# -- keep-alive ----------------------------------------------------------------------------------


def test_posts_in_a_row_to_one_origin_share_one_connection() -> None:
    async def main() -> None:
        async with serving(each(lambda r: answer(200, r.body[::-1]))) as s:
            poster = Poster(allow_private=True)
            for n in range(5):
                got = await post(poster, s.url(f"/n/{n}"), f"body {n}".encode())
                assert got == Answer(200, f"body {n}".encode()[::-1])
            assert kept(poster) == 1
            await poster.close()
            await eventually(lambda: s.ended == 1, "close() ends the kept connection")
        assert s.accepted == 1
        assert [r.target for r in s.received] == [f"/n/{n}" for n in range(5)]
        assert {r.connection for r in s.received} == {1}

    run(main())


def test_an_answer_saying_connection_close_is_not_kept() -> None:
    async def main() -> None:
        bye = answer(200, b"bye", [("Connection", "close")])
        async with serving(each(lambda r: bye)) as s:
            poster = Poster(allow_private=True)
            for _ in range(3):
                assert await post(poster, s.url()) == Answer(200, b"bye")
                assert kept(poster) == 0
            await poster.close()
        assert s.accepted == 3
        assert [r.connection for r in s.received] == [1, 2, 3]

    run(main())


def test_an_http_1_0_answer_is_not_kept() -> None:
    async def main() -> None:
        old = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"
        async with serving(each(lambda r: old)) as s:
            poster = Poster(allow_private=True)
            for _ in range(2):
                assert await post(poster, s.url()) == Answer(200, b"old")
            await poster.close()
        assert s.accepted == 2

    run(main())


def test_origins_do_not_share_connections() -> None:
    async def main() -> None:
        async with serving(ok(b"a")) as a, serving(ok(b"b")) as b:
            poster = Poster(allow_private=True)
            for _ in range(2):
                assert await post(poster, a.url()) == Answer(200, b"a")
                assert await post(poster, b.url()) == Answer(200, b"b")
            assert kept(poster) == 2
            await poster.close()
        assert (a.accepted, len(a.received), b.accepted, len(b.received)) == (1, 2, 1, 2)

    run(main())


def test_a_kept_connection_the_server_closed_after_answering_is_not_a_failure() -> None:
    """The receiver closes its side of an idle keep-alive connection (after answering, without
    saying so): the next post goes on a new connection, and arrives once."""

    async def main() -> None:
        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            if await server.read(reader, number) is not None:
                writer.write(answer(200, f"on {number}".encode()))
                await writer.drain()

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url(), b"one") == Answer(200, b"on 1")
            await eventually(lambda: s.ended == 1, "the server closes the first connection")
            await asyncio.sleep(0.05)
            assert await post(poster, s.url(), b"two") == Answer(200, b"on 2")
            await poster.close()
        assert s.accepted == 2
        assert [(r.connection, r.body) for r in s.received] == [(1, b"one"), (2, b"two")]

    run(main())


def test_a_kept_connection_dropped_as_the_next_request_comes_is_posted_again_once() -> None:
    """The race a kept connection is for: the receiver's idle timer ends the connection just as
    the next request is on its way (here: as soon as its bytes arrive, unread). The client has
    no answer on it, takes a new connection, and sends the request there: the receiver reads it
    once."""

    async def main() -> None:
        dropped: list[int] = []

        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            if number == 1:
                if await server.read(reader, number) is not None:
                    writer.write(answer(200, b"first"))
                    await writer.drain()
                    await reader.read(1)  # the next request arrives: drop it unread
                    dropped.append(number)
                return
            await ok(b"again")(server, number, reader, writer)

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url(), b"one") == Answer(200, b"first")
            assert kept(poster) == 1
            assert await post(poster, s.url(), b"two") == Answer(200, b"again")
            assert dropped == [1]
            assert await post(poster, s.url(), b"three") == Answer(200, b"again")
            await poster.close()
        assert s.accepted == 2
        assert [(r.connection, r.body) for r in s.received] == [
            (1, b"one"),
            (2, b"two"),
            (2, b"three"),
        ]

    run(main())


def test_a_connection_idle_too_long_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with serving(ok()) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url()) == Answer(200, b"ok")
            assert kept(poster) == 1
            monkeypatch.setattr("api.poster.IDLE_SECONDS", 0.0)
            assert await post(poster, s.url()) == Answer(200, b"ok")
            await eventually(lambda: s.ended == 1, "the client closes the stale connection")
            await poster.close()
        assert s.accepted == 2
        assert [r.connection for r in s.received] == [1, 2]

    run(main())


def test_at_most_keep_idle_connections_are_kept_per_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.poster.KEEP_IDLE", 2)

    async def main() -> None:
        release = asyncio.Event()

        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            while await server.read(reader, number) is not None:
                await release.wait()  # three requests in flight at once: three connections
                writer.write(answer())
                await writer.drain()

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            posts = [asyncio.create_task(post(poster, s.url())) for _ in range(3)]
            await eventually(lambda: len(s.received) == 3, "three posts at once")
            release.set()
            assert await asyncio.gather(*posts) == [Answer(200, b"ok")] * 3
            assert kept(poster) == 2
            await eventually(lambda: s.ended == 1, "the third connection is closed")
            for _ in range(4):
                assert await post(poster, s.url()) == Answer(200, b"ok")
            await poster.close()
        assert s.accepted == 3

    run(main())


# -- what an answer may look like ----------------------------------------------------------------


def test_a_chunked_answer_is_read_and_its_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: yes\r\n\r\n"
    )

    async def main() -> None:
        async with serving(each(lambda r: chunked)) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url()) == Answer(200, b"hello world")
            assert await post(poster, s.url()) == Answer(200, b"hello world")
            await poster.close()
        assert s.accepted == 1
        assert len(s.received) == 2

    run(main())


async def answer_then_close(
    server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One request answered with a body that only the connection's end delimits."""
    if await server.read(reader, number) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()


def test_an_answer_framed_by_closing_is_read_to_the_end() -> None:
    async def main() -> None:
        async with serving(answer_then_close) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url()) == Answer(200, b"until the end")
            assert kept(poster) == 0
            assert await post(poster, s.url()) == Answer(200, b"until the end")
            await poster.close()
        assert s.accepted == 2

    run(main())


def test_an_answer_longer_than_read_limit_is_cut_and_its_connection_dropped() -> None:
    long = bytes(range(100))

    async def main() -> None:
        async with serving(each(lambda r: answer(500, long))) as s:
            poster = Poster(allow_private=True, read_limit=10)
            assert await post(poster, s.url()) == Answer(500, long[:10])
            assert kept(poster) == 0
            await eventually(lambda: s.ended == 1, "the client closes the cut connection")
            assert await post(poster, s.url()) == Answer(500, long[:10])
            await poster.close()
        assert s.accepted == 2

    run(main())


def test_a_chunked_answer_longer_than_read_limit_is_cut() -> None:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"abcdef", b"ghijkl", b"mnop"))
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def main() -> None:
        async with serving(each(lambda r: chunked)) as s:
            poster = Poster(allow_private=True, read_limit=8)
            assert await post(poster, s.url()) == Answer(200, b"abcdefgh")
            assert await post(poster, s.url()) == Answer(200, b"abcdefgh")
            await poster.close()
        assert s.accepted == 2

    run(main())


def test_an_answer_within_read_limit_is_whole() -> None:
    async def main() -> None:
        async with serving(each(lambda r: answer(200, b"x" * 9))) as s:
            poster = Poster(allow_private=True, read_limit=10)
            assert await post(poster, s.url()) == Answer(200, b"x" * 9)
            assert await post(poster, s.url()) == Answer(200, b"x" * 9)
            await poster.close()
        assert s.accepted == 1

    run(main())


def test_informational_answers_before_the_final_one_are_skipped() -> None:
    early = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    )

    async def main() -> None:
        async with serving(each(lambda r: early + answer(202, b"accepted"))) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url()) == Answer(202, b"accepted")
            assert await post(poster, s.url()) == Answer(202, b"accepted")
            await poster.close()
        assert s.accepted == 1

    run(main())


# -- no answer -----------------------------------------------------------------------------------


def test_a_server_closing_without_answering_fails_retryably() -> None:
    async def main() -> None:
        async with serving(each(lambda r: None)) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url())
            await poster.close()
        assert failed.value.retryable
        assert "127.0.0.1" in failed.value.message
        assert "without answering" in failed.value.message
        # One kept connection is retried once; a new one is not: the request went once.
        assert s.accepted == 1
        assert len(s.received) == 1

    run(main())


def test_a_kept_connection_then_a_new_one_both_closing_fails_after_two_tries() -> None:
    async def main() -> None:
        async with serving(
            each(lambda r: answer() if r.connection == 1 and r.body == b"1" else None)
        ) as s:
            poster = Poster(allow_private=True)
            assert await post(poster, s.url(), b"1") == Answer(200, b"ok")
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url(), b"2")
            await poster.close()
        assert failed.value.retryable
        assert s.accepted == 2
        assert [(r.connection, r.body) for r in s.received] == [(1, b"1"), (1, b"2"), (2, b"2")]

    run(main())


def test_nothing_listening_fails_retryably_naming_the_host() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there now (the port was free a moment ago, and is not listened on).

    async def main() -> None:
        poster = Poster(allow_private=True)
        with pytest.raises(PostFailed) as failed:
            await post(poster, f"http://127.0.0.1:{port}/hook")
        assert failed.value.retryable
        assert "could not connect to 127.0.0.1" in failed.value.message
        await poster.close()

    run(main())


def test_a_host_not_found_fails_retryably() -> None:
    async def gone(host: str, port: int) -> list[str]:
        raise DownloadFailed(f"the host {host} was not found")

    async def main() -> None:
        for resolve in (gone, resolver({"gone.test": []})):
            poster = Poster(allow_private=False, resolve=resolve)
            with pytest.raises(PostFailed) as failed:
                await post(poster, "http://gone.test/hook")
            assert failed.value.retryable
            assert "gone.test" in failed.value.message

    run(main())


def test_a_garbage_answer_fails() -> None:
    async def main() -> None:
        garbage = b"SSH-2.0-OpenSSH_9.6\r\nthis is not HTTP\r\n\r\n"

        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await server.read(reader, number)
            writer.write(garbage)
            await writer.drain()
            await reader.read()  # keep the connection open until the client gives up on it

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url())
            assert "did not answer in HTTP" in failed.value.message
            assert "127.0.0.1" in failed.value.message
            await eventually(lambda: s.ended == 1, "the client closes the connection")
            assert kept(poster) == 0
            await poster.close()

    run(main())


def test_garbage_then_closing_fails() -> None:
    async def main() -> None:
        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await server.read(reader, number)
            writer.write(b"220 smtp.example ESMTP ready\r\n")
            await writer.drain()

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(PostFailed):
                await post(poster, s.url())
            await poster.close()

    run(main())


def test_an_answer_broken_off_fails_retryably() -> None:
    async def main() -> None:
        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await server.read(reader, number)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            await writer.drain()

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url())
            assert failed.value.retryable
            assert "broke off" in failed.value.message
            assert kept(poster) == 0
            await poster.close()
        assert s.accepted == 1  # an answer was under way: not posted again

    run(main())


def test_a_timeout_around_post_closes_the_connection() -> None:
    """The dispatcher bounds each post with ``asyncio.timeout``: a receiver that never answers
    has its connection closed (it is mid-request), not kept for the next post."""

    async def main() -> None:
        async def handler(
            server: Server, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            if number == 1:
                await server.read(reader, number)
                await reader.read()  # never answer; wait for the client to close
                return
            await ok(b"second")(server, number, reader, writer)

        async with serving(handler) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(TimeoutError) as timed_out:
                async with asyncio.timeout(0.3):
                    await post(poster, s.url(), b"one")
            assert kept(poster) == 0
            # The traceback holds the connection: only the poster's own close() ends it.
            await eventually(lambda: s.ended == 1, "the client closes the unanswered connection")
            del timed_out
            assert await post(poster, s.url(), b"two") == Answer(200, b"second")
            await poster.close()
        assert s.accepted == 2
        assert [(r.connection, r.body) for r in s.received] == [(1, b"one"), (2, b"two")]

    run(main())


# -- which URLs and addresses ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_private_addresses_are_refused_without_connecting(host: str) -> None:
    async def main() -> None:
        async with serving(ok()) as s:
            poster = Poster(allow_private=False)
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url(host=host))
            await asyncio.sleep(0.1)
            await poster.close()
        assert not failed.value.retryable
        assert "--allow-private-webhooks" in failed.value.message
        assert "loopback" in failed.value.message
        assert s.accepted == 0

    run(main())


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.1"],
        ["93.184.216.34", "10.0.0.1"],  # every address is checked, not just the first
        ["::ffff:127.0.0.1"],
        ["169.254.169.254"],
        ["100.64.0.7"],
    ],
)
def test_a_public_name_resolving_to_a_private_address_is_refused(addresses: list[str]) -> None:
    """DNS rebinding: the name was public when subscribed; it resolves privately now."""

    async def main() -> None:
        asked: list[str] = []
        poster = Poster(
            allow_private=False, resolve=resolver({"hooks.example.com": addresses}, asked)
        )
        with pytest.raises(PostFailed) as failed:
            await post(poster, "https://hooks.example.com/hook")
        await poster.close()
        assert asked == ["hooks.example.com"]
        assert not failed.value.retryable
        assert "--allow-private-webhooks" in failed.value.message
        assert "hooks.example.com resolves to a private address" in failed.value.message
        assert addresses[-1] in failed.value.message

    run(main())


def test_a_name_resolving_publicly_is_connected_to_at_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """allow_private=False lets a public address through, and connects to the address it
    checked (not to the name, which could resolve anew): the connection is recorded and then
    redirected to the test server."""

    async def main() -> None:
        async with serving(ok(b"public")) as s:
            real = asyncio.open_connection
            dialled: list[tuple[str, int]] = []

            async def dial(host: str, port: int, **kwargs: Any) -> Any:
                dialled.append((host, port))
                return await real("127.0.0.1", s.port, **kwargs)

            monkeypatch.setattr(asyncio, "open_connection", dial)
            poster = Poster(
                allow_private=False, resolve=resolver({"public.test": ["93.184.216.34"]})
            )
            assert await post(poster, "http://public.test:8080/in") == Answer(200, b"public")
            await poster.close()
        assert dialled == [("93.184.216.34", 8080)]
        [request] = s.received
        assert request.header("host") == "public.test:8080"
        assert request.target == "/in"

    run(main())


def test_allow_private_connects_to_a_name_resolving_to_loopback() -> None:
    async def main() -> None:
        async with serving(ok(b"fine")) as s:
            poster = Poster(allow_private=True, resolve=resolver({"public.test": ["127.0.0.1"]}))
            assert await post(poster, s.url(host="public.test")) == Answer(200, b"fine")
            await poster.close()
        assert s.received[0].header("host") == f"public.test:{s.port}"

    run(main())


def test_addresses_are_tried_in_turn() -> None:
    async def main() -> None:
        async with serving(ok(b"second address")) as s:
            poster = Poster(
                allow_private=True, resolve=resolver({"two.test": ["127.0.0.2", "127.0.0.1"]})
            )
            # 127.0.0.2 is loopback too, but nothing listens on it at this port.
            assert await post(poster, s.url(host="two.test")) == Answer(200, b"second address")
            await poster.close()
        assert s.accepted == 1

    run(main())


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "127.0.0.1:8080/hook",
        "http:///no-host",
        "http://:8080/no-host",
        "https://127.0.0.1:port/",
    ],
)
def test_urls_that_cannot_be_posted_to_fail_for_good(url: str) -> None:
    async def main() -> None:
        asked: list[str] = []
        poster = Poster(allow_private=True, resolve=resolver({}, asked))
        with pytest.raises(PostFailed) as failed:
            await post(poster, url)
        assert not failed.value.retryable
        assert asked == []

    run(main())


# -- https ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made by the ``openssl`` command."""
    openssl = shutil.which("openssl") or (
        "/usr/bin/openssl" if Path("/usr/bin/openssl").exists() else None
    )
    if openssl is None:
        pytest.skip("the openssl command is not installed: no certificate for the https tests")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def test_https_with_a_context_trusting_the_certificate(certificate: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with serving(
            each(lambda r: answer(200, r.body)), tls=server_context(certificate)
        ) as s:
            trusting = ssl.create_default_context(cafile=str(certificate[0]))
            poster = Poster(
                allow_private=True,
                ssl_context=trusting,
                resolve=resolver({"localhost": ["127.0.0.1"], "127.0.0.1": ["127.0.0.1"]}),
            )
            for host in ("127.0.0.1", "localhost", "127.0.0.1"):
                url = s.url(host=host, scheme="https")
                assert await post(poster, url, host.encode()) == Answer(200, host.encode())
            await poster.close()
        assert s.accepted == 2  # one per origin: 127.0.0.1's connection was kept
        assert [r.connection for r in s.received] == [1, 2, 1]

    run(main())


def test_https_with_the_default_context_refuses_a_self_signed_certificate(
    certificate: tuple[Path, Path],
) -> None:
    async def main() -> None:
        async with serving(ok(), tls=server_context(certificate)) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url(scheme="https"))
            await poster.close()
        assert failed.value.retryable
        assert "TLS with 127.0.0.1 failed" in failed.value.message
        assert s.received == []

    run(main())


def test_https_checks_the_urls_host_not_the_address(certificate: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with serving(ok(), tls=server_context(certificate)) as s:
            poster = Poster(
                allow_private=True,
                ssl_context=ssl.create_default_context(cafile=str(certificate[0])),
                resolve=resolver({"other.test": ["127.0.0.1"]}),
            )
            with pytest.raises(PostFailed) as failed:
                await post(poster, s.url(host="other.test", scheme="https"))
            await poster.close()
        assert "TLS with other.test failed" in failed.value.message
        assert s.received == []

    run(main())


def test_plain_http_to_a_tls_server_fails(certificate: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with serving(ok(), tls=server_context(certificate)) as s:
            poster = Poster(allow_private=True)
            with pytest.raises(PostFailed):
                await post(poster, s.url())
            await poster.close()
        assert s.received == []

    run(main())
