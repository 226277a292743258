"""Answers sent in pieces, each as the client takes it: files (``api.core.Download``) and large
Task JSON. A body sent whole is copied again by the server (h11 joins it, and the socket's
transport keeps what the client has not taken yet), so a 48 MiB list would briefly cost three
or four copies of itself; in pieces it costs itself and a piece."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Send

from api.core import PIECE, InputGone

#: Bodies smaller than this are answered whole (``ASGIResponse``): pieces cost a task group.
WHOLE = 1024 * 1024


class Streamed(ASGIResponse):
    """A body of ``size`` bytes sent in the pieces ``pieces`` yields, each as the client takes
    it (bounded memory however slowly it reads), with its Content-Length. Pieces that end with
    ``InputGone`` (a file purged while it is sent) end the answer short of that length: the
    server closes the connection and the client sees an incomplete body, never a shorter one. A
    client that hangs up stops the pieces (as Litestar's ``Stream`` does)."""

    def __init__(
        self,
        pieces: AsyncGenerator[bytes, None],
        *,
        size: int,
        media_type: str,
        headers: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(content_length=size, media_type=media_type, headers=headers)
        self.pieces = pieces

    async def send_body(self, send: Send, receive: Receive) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._send_pieces, send, group.cancel_scope)
            while not group.cancel_scope.cancel_called:
                if (await receive())["type"] == "http.disconnect":
                    group.cancel_scope.cancel()

    async def _send_pieces(self, send: Send, listening: anyio.CancelScope) -> None:
        try:
            try:
                async for piece in self.pieces:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            except InputGone:
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listening.cancel()
            with anyio.CancelScope(shield=True):
                await self.pieces.aclose()


async def _each(pieces: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    for piece in pieces:
        yield piece


def _slices(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), PIECE * 4):
        yield body[start : start + PIECE * 4]


def json_body(body: bytes) -> ASGIResponse:
    """JSON bytes as an answer: whole when small, else in pieces."""
    if len(body) < WHOLE:
        return ASGIResponse(body=body, media_type=MediaType.JSON)
    return Streamed(_each(_slices(body)), size=len(body), media_type=MediaType.JSON)


def _array(parts: list[bytes]) -> Iterator[bytes]:
    """``[part,part,...]``, each part let go of once it is sent."""
    parts.reverse()
    yield b"["
    first = True
    while parts:
        if not first:
            yield b","
        first = False
        part = parts.pop()
        yield from _slices(part)
        del part
    yield b"]"


def json_array(parts: list[bytes]) -> ASGIResponse:
    """A JSON array of the encoded ``parts`` as an answer: whole when small, else in pieces."""
    size = 2 + sum(len(part) for part in parts) + max(0, len(parts) - 1)
    if size < WHOLE:
        return ASGIResponse(body=b"[" + b",".join(parts) + b"]", media_type=MediaType.JSON)
    return Streamed(_each(_array(parts)), size=size, media_type=MediaType.JSON)
