"""``taskledger bench --db postgresql://...``: the benchmark on a PostgreSQL server.

Everything runs against the server the URL names, each app on a database of its own that this
run creates and drops (``tlbench_<pid>_<random>_<what>``):

1. HTTP: ``taskledger serve --db <url>`` as one node at every concurrency, then as two nodes (two
   ``serve`` processes on one database, each on its own port, the clients dealt out between
   them) at the highest; the same routes as on SQLite. For each scenario the write
   transactions it committed (each is one group-commit batch of one node, and announces itself
   with one NOTIFY, which the bench listens to) and the events they appended.
2. The floor on PostgreSQL (``scripts.bench_floor:create_postgres_app``: one row inserted per
   request, ``synchronous_commit=on``) and the peer with ``eventsourcing``'s PostgreSQL
   persistence (``scripts.bench_peer`` with ``PERSISTENCE_MODULE=eventsourcing.postgres``),
   one process each, same uvicorn settings, same load generator.
3. In-process: the append rate (batched and one command per transaction), replay (the log read
   from PostgreSQL in position order, decoded and folded), replay stream by stream, verify and
   rebuild on a log of N events; the peer reading its own notification log; GET p50/p99 at
   10,000 and at N events; and what one write transaction holds the ledger's lock for, by batch
   size (the figures the N-node calculation in BENCHMARKS.md starts from), with the server's
   round trip and a one-row commit beside them.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from scripts import bench

#: Batch sizes the write transaction is timed at (creates per transaction).
BATCH_SIZES = (1, 8, 32, 128)


class Databases:
    """Databases of this run on one server: made on demand, all dropped at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.prefix = f"tlbench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.made: list[str] = []

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.server_url, autocommit=True)

    def new(self, what: str) -> str:
        """A new, empty database; its URL (the server's URL with the database changed)."""
        name = f"{self.prefix}_{what}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{name}"))

    def drop_all(self) -> None:
        with self._admin() as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.clear()


def server_conditions(url: str) -> dict[str, Any]:
    """The server's version and the settings that decide what a commit costs."""
    import psycopg

    names = (
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
        "shared_buffers",
        "max_connections",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        found: dict[str, Any] = {"server_version": version[0] if version else "?"}
        for name in names:
            row = conn.execute(f"SHOW {name}").fetchone()
            found[name] = row[0] if row else "?"
    return found


def probe(url: str, round_trips: int = 2000, commits: int = 300) -> dict[str, Any]:
    """A round trip to the server (``SELECT 1``) and a one-row insert committed in autocommit
    with ``synchronous_commit=on`` (a round trip and a WAL flush), median microseconds."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE probe (id BIGINT PRIMARY KEY)")
        times = []
        for _ in range(round_trips):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
        rtt = statistics.median(times)
        times = []
        for n in range(commits):
            started = time.perf_counter()
            conn.execute("INSERT INTO probe (id) VALUES (%s)", (n,))
            times.append(time.perf_counter() - started)
        commit = statistics.median(times)
        conn.execute("DROP TABLE probe")
    return {"round_trip_us": round(rtt * 1e6, 1), "commit_us": round(commit * 1e6, 1)}


def settle(url: str) -> dict[str, Any]:
    """What a database that has been running a while has had done: ``VACUUM ANALYZE`` and a
    checkpoint after the bulk build, so that the figures measured on it next do not share the
    machine with autovacuum and the checkpointer catching up (CHECKPOINT needs the
    pg_checkpoint role or a superuser; without it the build's writes are left to the server)."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        try:
            conn.execute("CHECKPOINT")
            checkpoint = True
        except psycopg.errors.InsufficientPrivilege:
            checkpoint = False
    return {"seconds": round(time.perf_counter() - started, 2), "checkpoint": checkpoint}


def write_transaction_costs(url: str, repeats: int = 15) -> list[dict[str, Any]]:
    """How long one write transaction holds the ledger's lock, by batch size: batches of creates
    run through the command handler the way a node's writer runs them (the write turn, then one
    transaction), timed from taking the turn to letting it go. Median of ``repeats`` batches,
    after one warm-up. This process has no event loop to share the GIL with, so a server's
    writer, which has, takes longer."""
    from api.composition import Store
    from ledger.commands import CreateTask
    from ledger.events import blob_ref
    from ledger.handler import Request
    from ledger.log import Actor, Envelope

    store = Store(url)
    data = b"benchmark input " * 16
    ref = blob_ref(data)
    env = Envelope(recorded_at=datetime.now(UTC), actor=Actor(key_id="bench", role="system"))
    out = []
    try:
        for size in BATCH_SIZES:
            times = []
            for n in range(repeats + 1):
                requests = [
                    Request(
                        command=CreateTask(
                            task_id=str(uuid.uuid4()),
                            at=datetime.now(UTC),
                            owner="owner",
                            configuration={},
                            file=ref,
                            file_name="bench.txt",
                        ),
                        envelope=env,
                        blobs=(data,),
                    )
                    for _ in range(size)
                ]
                started = time.perf_counter()
                with store.log.write_turn():
                    results = store.handler.execute_batch(requests)
                elapsed = time.perf_counter() - started
                if any(isinstance(r, BaseException) for r in results):
                    raise RuntimeError(f"a create failed: {results}")
                if n:
                    times.append(elapsed)
            held = statistics.median(times)
            out.append(
                {
                    "batch": size,
                    "held_ms": round(held * 1000, 3),
                    "per_command_us": round(held / size * 1e6, 1),
                    "commands_per_s_cap": round(size / held),
                }
            )
    finally:
        store.close()
    return out


# -- targets and the report -----------------------------------------------------------------------


def rps(
    rows: list[dict], target: str, route: str, concurrency: int, nodes: int = 1
) -> float | None:
    row = bench.find(rows, target, route, concurrency, nodes)
    return row["rps"] if row else None


def basis(a: float | None, b: float | None, names: tuple[str, str]) -> str:
    if not a or not b:
        return ""
    return f"{names[0]} {a:,} vs {names[1]} {b:,} req/s = {bench.ratio(a, b)}"


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each a ratio of figures of this run (or replay's own rate)."""
    rows = report["http"]
    c = max(report["conditions"]["concurrency"])
    nodes = report["conditions"]["nodes"]
    ip = report["in_process"]
    checks: list[tuple[str, float | None, str, float]] = []

    create, peer_create = (
        rps(rows, "taskledger", "create", c),
        rps(rows, "eventsourcing", "create", c),
    )
    checks.append(
        (
            "create vs eventsourcing create",
            bench.ratio(create, peer_create),
            basis(create, peer_create, ("taskledger", "eventsourcing")),
            3.0,
        )
    )
    peer_claim = rps(rows, "eventsourcing", "claim", c)
    ways = []
    for label, route in (
        ("two requests", "claim+complete"),
        ("complete with claim_next", "claim+complete (claim_next)"),
    ):
        ours = rps(rows, "taskledger", route, c)
        if ours and peer_claim:
            ways.append(
                (bench.ratio(ours, peer_claim), f"{label}: {ours:,} vs {peer_claim:,} req/s")
            )
    checks.append(
        (
            "claim+complete vs eventsourcing claim",
            max((r for r, _ in ways if r is not None), default=None),
            " / ".join(f"{text} = {r}" for r, text in ways),
            3.0,
        )
    )
    checks.append(("replay events/s", ip["log"]["replay"]["events_per_s"], "", 200_000))
    for n in nodes:
        if n == 1:
            continue
        for route in ("create", "claim+complete", "claim+complete (claim_next)"):
            one, many = rps(rows, "taskledger", route, c, 1), rps(rows, "taskledger", route, c, n)
            checks.append(
                (
                    f"{route}: {n} nodes vs 1 node",
                    bench.ratio(many, one),
                    basis(many, one, (f"{n} nodes", "1 node")),
                    1.0,
                )
            )
    return [
        {
            "target": name,
            "value": value,
            "goal": f">= {goal}",
            "met": value is not None and value >= goal,
            "basis": text,
        }
        for name, value, text, goal in checks
    ]


def figures(report: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Ratios with no target, reported beside the targets: the floor, the peer's read."""
    rows = report["http"]
    c = max(report["conditions"]["concurrency"])
    ip = report["in_process"]
    insert = rps(rows, "floor", bench.FLOOR_INSERT_PG, c)
    read = rps(rows, "floor", "read one row", c)
    create, get = rps(rows, "taskledger", "create", c), rps(rows, "taskledger", "get", c)
    return [
        (
            "create vs floor insert",
            bench.ratio(create, insert),
            basis(create, insert, ("", "")).strip(),
        ),
        ("get vs floor read one row", bench.ratio(get, read), basis(get, read, ("", "")).strip()),
        (
            "replay vs eventsourcing notification read",
            bench.ratio(ip["log"]["replay"]["events_per_s"], ip["peer_read"]["events_per_s"]),
            "",
        ),
        (
            "get p99 at N events / p99 at 10k",
            bench.ratio(ip["get_large"]["p99_ms"], ip["get_small"]["p99_ms"]),
            "",
        ),
    ]


def markdown(report: dict[str, Any]) -> str:
    cond = report["conditions"]
    pg = cond["postgres"]
    ip = report["in_process"]
    lines = [
        f"Run {cond['started_at']} on {cond['cpus']} CPUs ({cond['machine']}); "
        f"{cond['seconds_per_scenario']} s per HTTP scenario; log of {cond['events']:,} events; "
        f"PostgreSQL {pg['server_version']} on {cond['server']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in cond["versions"].items()),
        "",
        f"PostgreSQL: synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']},"
        f" wal_sync_method={pg['wal_sync_method']}, commit_delay={pg['commit_delay']},"
        f" shared_buffers={pg['shared_buffers']}. A round trip (`SELECT 1`)"
        f" {ip['probe']['round_trip_us']} us, a one-row autocommit insert"
        f" {ip['probe']['commit_us']} us (medians). Each app on a database of its own, made"
        " and dropped by the run. taskledger: `serve --db <url>`, group commit (one transaction"
        " per batch, under the ledger's advisory lock); floor: one row inserted per request,"
        " autocommit, `synchronous_commit=on`, async psycopg pool of"
        f" {cond['floor_pool']}; peer: eventsourcing {cond['versions'].get('eventsourcing')} with"
        " `eventsourcing.postgres` and its defaults. All uvicorn (uvloop, httptools), log level"
        " warning, no access log, one process each; taskledger also as 2 nodes (two `serve`"
        " processes on one database, the clients split between them) at the highest"
        " concurrency. The load generator and the PostgreSQL server share the machine's cores"
        " with the app under test. `write tx` is the write transactions (group-commit batches)"
        " the scenario committed, `events/tx` the events they appended per transaction.",
        "",
        "| target | route | nodes | clients | requests | errors | req/s | p50 ms | p99 ms"
        " | write tx | events/tx |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["http"]:
        batches = row.get("batches")
        per = round(row["events"] / batches, 1) if batches else ""
        lines.append(
            f"| {row['target']} | {row['route']} | {row.get('processes', 1)} | "
            f"{row['concurrency']} | {row['requests']} | {row['errors']} | {row['rps']} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {batches if batches is not None else ''} | "
            f"{per} |"
        )
    lines += [
        "",
        "| in-process | figure |",
        "| --- | --- |",
        f"| append, batched (500 commands a transaction) | {ip['append_batched']['events_per_s']:,} events/s |",
        f"| append, one command per transaction | {ip['append_unbatched']['events_per_s']:,} events/s |",
        f"| replay (position order, decode + fold into every task's state) | {ip['log']['replay']['events_per_s']:,} events/s |",
        f"| replay stream by stream (what verify and rebuild do; flat memory) | {ip['log']['replay_by_stream']['events_per_s']:,} events/s |",
        f"| eventsourcing reading its notification log | {ip['peer_read']['events_per_s']:,} events/s |",
        f"| verify ({ip['log']['events']:,} events) | {ip['log']['verify']['seconds']} s ({ip['log']['verify']['events_per_s']:,} events/s) |",
        f"| rebuild ({ip['log']['events']:,} events) | {ip['log']['rebuild']['seconds']} s ({ip['log']['rebuild']['events_per_s']:,} events/s) |",
        f"| GET p50 / p99 at {ip['small_events']:,} events | {ip['get_small']['p50_ms']} / {ip['get_small']['p99_ms']} ms |",
        f"| GET p50 / p99 at {ip['log']['events']:,} events | {ip['get_large']['p50_ms']} / {ip['get_large']['p99_ms']} ms |",
        f"| server peak RSS, HTTP load run (1 node) | {report['server'].get('peak_rss_mb_1')} MB |",
        "",
        "| write transaction of N creates (the write turn held) | held | per create | cap under one lock |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for cost in ip["write_transaction"]:
        lines.append(
            f"| {cost['batch']} | {cost['held_ms']} ms | {cost['per_command_us']} us"
            f" | {cost['commands_per_s_cap']:,} creates/s |"
        )
    lines += [
        "",
        "| target | value | goal | met | from |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} | "
            f"{t.get('basis', '')} |"
        )
    lines += ["", "| ratio (no target) | value | from |", "| --- | ---: | --- |"]
    for name, value, text in report["figures"]:
        lines.append(f"| {name} | {value} | {text} |")
    return "\n".join(lines) + "\n"


def run(
    url: str,
    *,
    events: int,
    seconds: float,
    concurrency: list[int],
    out: Path,
    small_events: int = 10_000,
    get_requests: int = 3000,
    echo: Callable[[str], None] = print,
    nodes: list[int] = [1, 2],  # noqa: B006 - read only
) -> dict[str, Any]:
    from ledger.postgres import redact
    from scripts.bench_floor import PG_POOL_SIZE

    work = Path(tempfile.mkdtemp(prefix="taskledger-bench-pg-"))
    out.mkdir(parents=True, exist_ok=True)
    dbs = Databases(url)
    report: dict[str, Any] = {
        "conditions": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "backend": "postgresql",
            "server": redact(url),
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}",
            "versions": bench.versions(),
            "postgres": server_conditions(url),
            "concurrency": concurrency,
            "nodes": nodes,
            "seconds_per_scenario": seconds,
            "events": events,
            "floor_pool": PG_POOL_SIZE,
        }
    }
    try:
        http: list[dict] = []
        server: dict[str, Any] = {}
        for n in nodes:
            # One node: every concurrency. More: only the highest (one client can't use them).
            levels = concurrency if n == 1 else [max(concurrency)]
            echo(f"HTTP: taskledger, {n} node(s) on one PostgreSQL database ...")
            rows, info = bench.http_taskledger(
                seconds, levels, work, db=dbs.new(f"taskledger_{n}"), nodes=n
            )
            http += rows
            server[f"peak_rss_mb_{n}"] = info["peak_rss_mb"]
        echo("HTTP: floor on PostgreSQL ...")
        http += bench.http_floor(seconds, concurrency, work, db=dbs.new("floor"))
        echo("HTTP: eventsourcing peer on PostgreSQL ...")
        http += bench.http_peer(seconds, concurrency, work, db=dbs.new("peer"))
        report["http"], report["server"] = http, server

        ip: dict[str, Any] = {"small_events": small_events}
        ip["probe"] = probe(dbs.new("probe"))
        echo("in-process: write transactions by batch size ...")
        ip["write_transaction"] = write_transaction_costs(dbs.new("batches"))
        echo(f"in-process: building a log of {events:,} events ...")
        large, small = dbs.new("large"), dbs.new("small")
        ip["append_batched"] = bench.build_log(large, events)
        ip["append_unbatched"] = bench.append_unbatched(dbs.new("unbatched"), 300)
        bench.build_log(small, small_events)
        echo("in-process: VACUUM ANALYZE and CHECKPOINT after the build ...")
        ip["settle"] = {"large": settle(large), "small": settle(small)}
        echo("in-process: replay, verify, rebuild ...")
        ip["log"] = bench.measure_log(large)
        echo("in-process: eventsourcing notification log ...")
        ip["peer_read"] = bench.peer_notification_read(dbs.new("peer_log"), min(events, 200_000))
        echo("GET latency at small and large logs ...")
        ip["get_small"], ip["get_large"] = bench.get_latency(small, large, get_requests)
        report["in_process"] = ip
        report["targets"] = targets(report)
        report["figures"] = figures(report)
    finally:
        dbs.drop_all()
        shutil.rmtree(work, ignore_errors=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    return report
