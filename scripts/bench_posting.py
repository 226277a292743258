"""How much CPU one webhook post costs: httpx (what the dispatcher used first) against
``api.poster.Poster`` (what it uses), side by side in one run against the same receiver.

    python -m scripts.bench_posting --posts 3000 --rounds 2

Each round posts ``--posts`` times, 16 at a time, a 600-byte body to a bare asyncio receiver
in a process of its own (``scripts.bench_webhooks.serve_receiver``), first through an httpx
``AsyncClient`` configured as the dispatcher had it (the address-checking transport of
``api.fetch``, 16 kept-alive connections), then through a ``Poster``; it prints the CPU time
this process spent per post (user + system, ``getrusage``) and the wall time of each. The
receiver's own CPU is not counted.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable

import click
import httpcore
import httpx

from api.fetch import refusal_kind, resolve_host
from api.poster import Poster
from scripts.bench_webhooks import start_receiver

BODY = b'{"type":"task.created","timestamp":"2026-12-07T23:20:27.529797Z","data":{}}' * 8
HEADERS = [
    ("content-type", "application/json"),
    ("webhook-id", "msg_5e0d6c1b2a3f4e5d6c7b8a9f0e1d2c3b"),
    ("webhook-timestamp", "1796685627"),
    ("webhook-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
]
CONCURRENCY = 16


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """The address check where the connection is made, as httpx did it for the dispatcher."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, **kwargs: object) -> object:  # type: ignore[override]
        addresses = await resolve_host(host, port)
        assert all(refusal_kind(a) in (None, "loopback") for a in addresses)
        return await self._inner.connect_tcp(addresses[0], port, **kwargs)  # type: ignore[arg-type]


async def through_httpx(url: str, posts: int) -> None:
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(  # as api.fetch's transport builds it
        max_connections=100,
        max_keepalive_connections=CONCURRENCY,
        network_backend=_CheckedBackend(),
    )
    async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
        await _run(posts, lambda: _httpx_post(client, url))


async def _httpx_post(client: httpx.AsyncClient, url: str) -> None:
    async with client.stream("POST", url, content=BODY, headers=dict(HEADERS)) as response:
        async for _ in response.aiter_raw():
            pass
        assert response.status_code == 200


async def through_poster(url: str, posts: int) -> None:
    poster = Poster(allow_private=True)
    try:
        await _run(posts, lambda: _poster_post(poster, url))
    finally:
        await poster.close()


async def _poster_post(poster: Poster, url: str) -> None:
    answer = await poster.post(url, HEADERS, BODY)
    assert answer.status == 200


async def _run(posts: int, post: Callable[[], Awaitable[None]]) -> None:
    places = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with places:
            await post()

    await asyncio.gather(*(one() for _ in range(posts)))


@click.command()
@click.option("--posts", default=3000, show_default=True, type=click.IntRange(min=1))
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1))
def main(posts: int, rounds: int) -> None:
    """CPU per webhook post: httpx against api.poster, side by side.

    Example:

        python -m scripts.bench_posting --posts 3000 --rounds 2
    """
    receiver = start_receiver()
    url = f"http://127.0.0.1:{receiver.port}/hook"
    try:
        for round_ in range(1, rounds + 1):
            for name, run in (("httpx", through_httpx), ("api.poster", through_poster)):
                cpu, wall = cpu_seconds(), time.perf_counter()
                asyncio.run(run(url, posts))
                cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
                click.echo(
                    f"round {round_} {name:10} {cpu / posts * 1e6:7.0f} us CPU per post, "
                    f"{posts / wall:7.0f} posts/s"
                )
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
