"""Posting webhook deliveries: HTTP/1.1 over asyncio streams, the protocol kept by h11, with
keep-alive connections per origin.

The dispatcher posts the same small request to the same few receivers again and again, and
does it in the server's own process. Through httpx that cost 1.2-1.7 ms of CPU a request
here, against about 0.1 ms this way (``python -m scripts.bench_posting``, side by side in one
run): httpx's generality (auth, redirects, cookies, AnyIO, a pool that asks every idle
connection's socket for its whole attribute table before each request) is paid for by every
delivery, and the API shares the process's GIL with it. h11 (httpcore's own HTTP/1.1 state
machine) keeps the protocol honest: framing, chunked answers, keep-alive and its end.

What a post is held to (the dispatcher adds the deadline of ``--webhook-timeout``):

- ``http`` and ``https`` only (certificates checked as browsers do);
- unless ``allow_private``: every address the host resolves to is checked where the connection
  is made (``api.fetch.refusal_kind``), and the connection is made to a checked address, so a
  name that resolved to a public address when subscribed and to a private one now (DNS
  rebinding) is refused, not reached;
- no redirect is followed (a 3xx is an answer like any other);
- at most ``read_limit`` bytes of an answer are read; a longer one is cut there and its
  connection closed.

A connection kept from an earlier post that its receiver has closed meanwhile fails before any
answer arrives: the post is made once more on a new connection. Almost always the request never
reached the receiver; if the receiver took it and then dropped the connection without
answering, it gets it twice in one attempt, with the same ``webhook-id`` (receivers
deduplicate on it: deliveries are at least once anyway).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import h11

from api.fetch import DownloadFailed, Resolver, refusal_kind, resolve_host

#: Idle connections kept per origin, and how long one may sit idle before it is dropped
#: (receivers close theirs after a while; a connection older than this is not worth trying).
KEEP_IDLE = 16
IDLE_SECONDS = 15.0
PIECE = 64 * 1024


class PostFailed(Exception):
    """No answer: why, in a person's words, and whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Answer(NamedTuple):
    status: int
    #: The first ``read_limit`` bytes of the answer's body.
    body: bytes


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and time.monotonic() - self.idle_since < IDLE_SECONDS
        )

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A kept connection gave out before any answer came: post again on a new one."""


class Poster:
    def __init__(
        self,
        *,
        allow_private: bool,
        read_limit: int = 64 * 1024,
        resolve: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "taskledger-webhooks",
    ) -> None:
        self.allow_private = allow_private
        self.read_limit = read_limit
        self._resolve = resolve
        self._ssl = ssl_context
        self._user_agent = user_agent
        self._idle: dict[Origin, list[_Connection]] = {}

    async def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> Answer:
        """POST ``body`` to ``url``; the answer, or PostFailed."""
        origin, target, host_header = self._parse(url)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("host", host_header),
                ("user-agent", self._user_agent),
                ("content-length", str(len(body))),
                *headers,
            ],
        )
        kept = self._take_idle(origin)
        if kept is not None:
            try:
                return await self._exchange(origin, kept, request, body)
            except _Stale:
                pass
        try:
            return await self._exchange(origin, await self._connect(origin), request, body)
        except _Stale as exc:
            raise PostFailed(f"{origin.host} closed the connection without answering") from exc

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # -- the pieces -------------------------------------------------------------------------

    @staticmethod
    def _parse(url: str) -> tuple[Origin, str, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise PostFailed("only http and https URLs are posted to", retryable=False)
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise PostFailed("the URL's port is not a number", retryable=False) from None
        host = parts.hostname
        if not host:
            raise PostFailed("the URL has no host", retryable=False)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Origin(scheme, host, port), target, parts.netloc.rpartition("@")[2]

    def _take_idle(self, origin: Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        while connections:
            connection = connections.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _keep(self, origin: Origin, connection: _Connection) -> None:
        connections = self._idle.setdefault(origin, [])
        if len(connections) >= KEEP_IDLE:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connections.append(connection)

    async def _connect(self, origin: Origin) -> _Connection:
        try:
            addresses = await self._resolve(origin.host, origin.port)
        except DownloadFailed as exc:
            raise PostFailed(str(exc)) from None
        if not addresses:
            raise PostFailed(f"the host {origin.host} was not found")
        if not self.allow_private:
            for address in addresses:
                kind = refusal_kind(address)
                if kind is not None:
                    raise PostFailed(
                        f"{origin.host} resolves to a private address ({address}, {kind}); the "
                        "server refuses such URLs unless started with --allow-private-webhooks",
                        retryable=False,
                    )
        context = None
        if origin.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        failure: OSError | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    address,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
                return _Connection(reader, writer)
            except ssl.SSLError as exc:
                raise PostFailed(f"TLS with {origin.host} failed ({exc.reason or exc})") from None
            except OSError as exc:
                failure = exc
        raise PostFailed(f"could not connect to {origin.host} ({failure})")

    async def _exchange(
        self, origin: Origin, connection: _Connection, request: h11.Request, body: bytes
    ) -> Answer:
        protocol = connection.protocol
        answered = False
        try:
            data = protocol.send(request) or b""
            data += protocol.send(h11.Data(data=body)) or b""
            data += protocol.send(h11.EndOfMessage()) or b""
            connection.writer.write(data)
            await connection.writer.drain()
            status = 0
            kept = bytearray()
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    piece = await connection.reader.read(PIECE)
                    if not piece and not answered:
                        raise _Stale()
                    protocol.receive_data(piece)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    answered = True
                    status = event.status_code
                    continue
                if isinstance(event, h11.Data):
                    room = self.read_limit - len(kept)
                    kept += event.data[:room]
                    if len(event.data) >= room:  # read as much as it may: stop here
                        connection.close()
                        return Answer(status, bytes(kept))
                    continue
                if isinstance(event, h11.EndOfMessage):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    if not answered:
                        raise _Stale()
                    break
        except _Stale:
            connection.close()
            raise
        except h11.RemoteProtocolError as exc:
            connection.close()
            if not answered:
                raise PostFailed(f"{origin.host} did not answer in HTTP ({exc})") from None
            raise PostFailed(f"{origin.host} broke off its answer ({exc})") from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            connection.close()
            if not answered:
                raise _Stale() from exc
            raise PostFailed(f"{origin.host} broke off its answer ({exc})") from None
        except BaseException:  # a timeout or a cancellation: the connection is in mid-request
            connection.close()
            raise
        # h11 ends an answer whose body runs to the connection's end (no Content-Length, not
        # chunked) in DONE, as if the connection could be used again: it cannot.
        if (
            protocol.our_state is h11.DONE
            and protocol.their_state is h11.DONE
            and not connection.reader.at_eof()
        ):
            protocol.start_next_cycle()
            self._keep(origin, connection)
        else:
            connection.close()
        return Answer(status, bytes(kept))
