"""Webhook delivery under load, measured against a real receiver on 127.0.0.1.

    python -m scripts.bench_webhooks --tasks 1000 --seconds 5 --rounds 3

Two figures (BENCHMARKS.md, "Webhooks"):

* **Delivery throughput**: ``--tasks`` tasks are created, then claimed and completed by 8
  workers (complete with ``claim_next``), with one subscription to ``task.succeeded`` on a
  receiver (a bare asyncio HTTP/1.1 server in a process of its own, answering 200 at once).
  How long after the last completion the receiver holds one delivery per task, and how many
  deliveries a second arrived from the first completion on.
* **Create rate with a subscription**: three servers on fresh databases: one with a
  subscription that hears every event (so each create writes a delivery and the dispatcher
  posts it during the round), one with a subscription to ``task.succeeded`` and
  ``task.failed`` (what a client waiting for its results subscribes to: creates are checked
  against it and deliver nothing), one without; creates from 32 clients for ``--seconds``,
  alternating between them for ``--rounds`` rounds. After each round with every event the
  backlog of deliveries is sent before the next round starts, so no dispatcher runs in
  another server's round. The ratios of the medians, and the same run's figures.

Every figure is from this one run on this machine: compare the ratio, not the rates, with
other machines.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx

from scripts.bench import (
    FILE_B64,
    Connection,
    Process,
    Stats,
    drive,
    free_port,
    make_key,
    run_async,
    start_taskledger,
)

SERVE_ARGS = ("--allow-private-webhooks",)


# -- the receiver --------------------------------------------------------------------------------


class _Receiving(asyncio.Protocol):
    """One connection to the receiver: HTTP/1.1 requests with a Content-Length (what the
    dispatcher sends), kept alive; each POST answered 200 at once and counted."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head[1:])
            }
            length = int(fields.get("content-length") or 0)
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length :]
            if head[0].startswith("POST"):
                now = time.time()
                self.state["count"] += 1
                self.state["first"] = self.state["first"] or now
                self.state["last"] = now
                self.state["ids"].add(fields.get("webhook-id"))
                body = b"ok"
            else:
                body = json.dumps(
                    {
                        "count": self.state["count"],
                        "unique": len(self.state["ids"]),
                        "first": self.state["first"],
                        "last": self.state["last"],
                    }
                ).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )


def serve_receiver(port: int) -> None:
    """The receiver (a process of its own): a bare asyncio HTTP/1.1 server, so that as little
    of the machine as possible goes to the receiving end, which in production is elsewhere."""
    state: dict[str, Any] = {"count": 0, "first": None, "last": None, "ids": set()}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Receiving(state), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_receiver() -> Process:
    port = free_port()
    return Process(
        [
            sys.executable,
            "-c",
            f"from scripts.bench_webhooks import serve_receiver; serve_receiver({port})",
        ],
        port,
    )


def receiver_stats(receiver: Process) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{receiver.port}/stats", timeout=10).json()


def wait_for_count(receiver: Process, count: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = receiver_stats(receiver)
        if stats["unique"] >= count or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def subscribe(port: int, key: str, url: str, events: list[str] | None) -> None:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = events
    answer = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/webhooks",
        json=body,
        headers={"Authorization": key},
        timeout=30,
    )
    answer.raise_for_status()


# -- delivery throughput -------------------------------------------------------------------------


def throughput(work: Path, tasks: int) -> dict[str, Any]:
    db = work / "throughput.db"
    server, admin = start_taskledger(db, serve_args=SERVE_ARGS)
    receiver = start_receiver()
    try:
        worker_key = make_key(db, "pool", "worker")
        subscribe(server.port, admin, f"http://127.0.0.1:{receiver.port}/", ["task.succeeded"])
        user = {"Authorization": admin}
        worker = {"Authorization": worker_key}
        create_body = json.dumps({"file": FILE_B64, "file_name": "bench.txt"}).encode()

        async def create(conn: Connection) -> bool:
            status, _ = await conn.request("POST", "/api/v1/task/parse", create_body, user)
            return status == 200

        run_async(
            drive(
                "127.0.0.1",
                server.port,
                create,
                concurrency=32,
                seconds=600,
                max_ops=tasks,
                stats=Stats("create", "taskledger", 32),
            )
        )
        output = {
            "chunks": [],
            "file_name": "bench.txt",
            "page_count": 1,
            "pdf_url": None,
        }
        completed = {"count": 0, "last": 0.0, "first": 0.0}

        async def work_loop(n: int) -> None:
            conn = Connection("127.0.0.1", server.port)
            worker_id = f"bench-w{n}"
            claim = json.dumps({"worker_id": worker_id}).encode()
            done = json.dumps({"worker_id": worker_id, "output": output, "claim_next": True})
            status, body = await conn.request("POST", "/api/v1/worker/claim", claim, worker)
            current = json.loads(body)["task_id"] if status == 200 else None
            while current is not None:
                status, body = await conn.request(
                    "POST", f"/api/v1/task/{current}/complete", done.encode(), worker
                )
                if status != 200:
                    raise RuntimeError(f"complete answered {status}: {body[:200]!r}")
                now = time.time()
                completed["first"] = completed["first"] or now
                completed["last"] = now
                completed["count"] += 1
                following = json.loads(body).get("next")
                current = following["task_id"] if following else None
            await conn.close()

        async def all_workers() -> None:
            await asyncio.gather(*(work_loop(n) for n in range(8)))

        run_async(all_workers())
        stats = wait_for_count(receiver, tasks, timeout=120)
        finished = stats["last"] or 0.0
        return {
            "tasks": tasks,
            "completed": completed["count"],
            "delivered": stats["unique"],
            "requests": stats["count"],
            "completions_seconds": round(completed["last"] - completed["first"], 3),
            "last_delivery_after_last_completion_s": round(finished - completed["last"], 3),
            "deliveries_per_second": round(
                stats["unique"] / max(finished - completed["first"], 1e-9), 1
            ),
        }
    finally:
        server.stop()
        receiver.stop()


# -- create rate with and without a subscription ---------------------------------------------


def create_rate(work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Creates a second on three servers, alternating: with a subscription to every event
    ("with": each create is delivered, during the round), with one to ``task.succeeded`` and
    ``task.failed`` only ("with_done": subscribed, but creates deliver nothing), and with none
    ("without")."""
    receiver = start_receiver()
    plain, plain_key = start_taskledger(work / "plain.db", serve_args=SERVE_ARGS)
    hooked, hooked_key = start_taskledger(work / "hooked.db", serve_args=SERVE_ARGS)
    done, done_key = start_taskledger(work / "done.db", serve_args=SERVE_ARGS)
    try:
        url = f"http://127.0.0.1:{receiver.port}/"
        subscribe(hooked.port, hooked_key, url, None)
        subscribe(done.port, done_key, url, ["task.succeeded", "task.failed"])
        body = json.dumps({"file": FILE_B64, "file_name": "bench.txt"}).encode()
        rates: dict[str, list[float]] = {"without": [], "with": [], "with_done": []}
        drain: list[float] = []
        sent = 0

        def one_round(port: int, key: str, label: str) -> int:
            headers = {"Authorization": key}

            async def create(conn: Connection) -> bool:
                status, _ = await conn.request("POST", "/api/v1/task/parse", body, headers)
                return status == 200

            stats = run_async(
                drive(
                    "127.0.0.1",
                    port,
                    create,
                    concurrency=32,
                    seconds=seconds,
                    max_ops=None,
                    stats=Stats("create", label, 32),
                )
            )
            rates[label].append(stats.summary()["rps"])
            return len(stats.latencies)

        for _ in range(rounds):
            sent += one_round(hooked.port, hooked_key, "with")
            started = time.monotonic()
            wait_for_count(receiver, sent, timeout=120)
            drain.append(time.monotonic() - started)
            one_round(done.port, done_key, "with_done")
            one_round(plain.port, plain_key, "without")
        delivered = receiver_stats(receiver)["unique"]
        without = statistics.median(rates["without"])
        with_ = statistics.median(rates["with"])
        with_done = statistics.median(rates["with_done"])
        return {
            "seconds_per_round": seconds,
            "rounds": rounds,
            "creates_per_s_without": rates["without"],
            "creates_per_s_with": rates["with"],
            "creates_per_s_with_done": rates["with_done"],
            "median_without": without,
            "median_with": with_,
            "median_with_done": with_done,
            "ratio_with_to_without": round(with_ / without, 3) if without else None,
            "ratio_with_done_to_without": round(with_done / without, 3) if without else None,
            "deliveries_expected": sent,
            "deliveries_received": delivered,
            "drain_after_round_s": [round(d, 2) for d in drain],
        }
    finally:
        plain.stop()
        hooked.stop()
        done.stop()
        receiver.stop()


@click.command()
@click.option("--tasks", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--seconds", default=5.0, show_default=True, type=click.FloatRange(min=0.5))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write JSON here.")
def main(tasks: int, seconds: float, rounds: int, out: Path | None) -> None:
    """Measure webhook delivery throughput and the create rate with a subscription.

    Example:

        python -m scripts.bench_webhooks --tasks 1000 --seconds 5 --rounds 3
    """
    report = measure(tasks, seconds, rounds)
    text = json.dumps(report, indent=2)
    click.echo(text)
    if out is not None:
        out.write_text(text)
    summarise(report, lambda line: click.echo(line, err=True))


def measure(tasks: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Both figures, each on fresh databases in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="taskledger-bench-hooks-") as tmp:
        work = Path(tmp)
        return {
            "throughput": throughput(work, tasks),
            "create_rate": create_rate(work, seconds, rounds),
        }


def summarise(report: dict[str, Any], echo: Any) -> None:
    t, c = report["throughput"], report["create_rate"]
    echo(
        f"{t['delivered']} of {t['tasks']} deliveries; the last "
        f"{t['last_delivery_after_last_completion_s']} s after the last completion "
        f"(target: within 10 s); {t['deliveries_per_second']} deliveries/s"
    )
    echo(
        f"creates/s with a subscription to every event (each create delivered during the run) "
        f"{c['median_with']} vs without {c['median_without']}: {c['ratio_with_to_without']} "
        "(target: >= 0.90)"
    )
    echo(
        f"creates/s with a subscription to task.succeeded and task.failed "
        f"{c['median_with_done']} vs without {c['median_without']}: "
        f"{c['ratio_with_done_to_without']} (target: >= 0.90)"
    )


if __name__ == "__main__":
    main()
