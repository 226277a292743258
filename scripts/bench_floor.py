"""The benchmark's floor: the least a Litestar endpoint backed by SQLite can do per request.

``POST /rows`` inserts one row (WAL, ``synchronous=NORMAL``, one commit per request) and
``GET /rows/{id}`` reads one row by key. Served by uvicorn with the same settings as taskledger.
Run: ``BENCH_DB=/tmp/floor.db uvicorn --factory scripts.bench_floor:create_app``.

``create_postgres_app`` is the same floor on PostgreSQL (``BENCH_DB`` a ``postgresql://`` URL):
each request is one statement on a pooled async psycopg connection in autocommit, so an insert
is one round trip and one commit, flushed before it returns (``synchronous_commit=on``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid

from litestar import Litestar, Request, Response, get, post


def create_app() -> Litestar:
    path = os.environ["BENCH_DB"]
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA synchronous = NORMAL")
    writer.execute("CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
    local = threading.local()

    def reader() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(path, check_same_thread=False)
        return conn

    @post("/rows", status_code=200)
    async def insert(request: Request) -> Response[bytes]:
        body = await request.body()
        row_id = str(uuid.uuid4())
        writer.execute("INSERT INTO rows (id, body) VALUES (?, ?)", (row_id, body))
        return Response(content=b'{"id":"%s"}' % row_id.encode(), media_type="application/json")

    @get("/rows/{row_id:str}", sync_to_thread=True)
    def read(row_id: str) -> Response[bytes]:
        row = reader().execute("SELECT body FROM rows WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            return Response(content=b"not found", status_code=404)
        return Response(content=bytes(row[0]), media_type="application/json")

    return Litestar(route_handlers=[insert, read], debug=False)


#: Connections of the PostgreSQL floor's pool: enough for its inserts' commits to overlap (the
#: server flushes concurrent commits together) at the benchmark's 32 clients.
PG_POOL_SIZE = 16


def create_postgres_app() -> Litestar:
    from psycopg import AsyncConnection
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg_pool import AsyncConnectionPool

    params = conninfo_to_dict(os.environ["BENCH_DB"])
    params["options"] = f"{params.get('options') or ''} -c synchronous_commit=on".strip()
    pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
        make_conninfo(**params),  # type: ignore[arg-type]
        min_size=PG_POOL_SIZE,
        max_size=PG_POOL_SIZE,
        kwargs={"autocommit": True},
        open=False,
    )

    async def start() -> None:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, body BYTEA NOT NULL)"
            )

    @post("/rows", status_code=200)
    async def insert(request: Request) -> Response[bytes]:
        body = await request.body()
        row_id = str(uuid.uuid4())
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO rows (id, body) VALUES (%s, %s)", (row_id, body))
        return Response(content=b'{"id":"%s"}' % row_id.encode(), media_type="application/json")

    @get("/rows/{row_id:str}")
    async def read(row_id: str) -> Response[bytes]:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT body FROM rows WHERE id = %s", (row_id,))
            row = await cursor.fetchone()
        if row is None:
            return Response(content=b"not found", status_code=404)
        return Response(content=bytes(row[0]), media_type="application/json")

    return Litestar(
        route_handlers=[insert, read], on_startup=[start], on_shutdown=[pool.close], debug=False
    )
