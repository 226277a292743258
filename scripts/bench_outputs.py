"""What large outputs and large inputs cost a real ``taskledger serve``: reads that do or do not
return the outputs' chunks, downloads that stall, and one large create.

    python -m scripts.bench_outputs                   # 30 outputs of 12 MiB (about 2 minutes)
    python -m scripts.bench_outputs --output-mb 1     # scaled down: the same steps, smaller

1. **Build** (in process, through the service: create, claim and complete, as a worker does):
   ``--tasks`` tasks of one user, each with its own output of about ``--output-mb`` MiB of
   Chunkr-shaped JSON, and one task of another user with an input of ``--input-mb`` MiB.
2. **Reads** over HTTP against ``taskledger serve`` on that database: the default list
   (``GET /api/v1/tasks``: every task, no chunks), a GET with ``include_chunks=false``, a GET
   with its chunks, and a list with chunks (``limit=--chunked-limit``); the median and the
   slowest of ``--rounds`` requests each, the bytes answered, and the server's peak RSS after.
   Then four clients list with chunks at once (three lists each) while another user GETs a
   task without chunks over and over: that GET's median and slowest time, and the peak RSS.
3. **Stalled downloads** (a new server process on the same database): ``--stalled`` clients
   each ask for the large input by its signed link, read the first 64 KiB and stop reading;
   the server's RSS before, while they stall, and after they hang up.
4. **One large create** (a new server on a new database, after one small create): how far the
   server's peak RSS (``VmHWM``) rises above its RSS before, over one create of ``--create-mb``
   MiB sent as base64.

Every server runs with its defaults (``--max-body-mb`` raised for the create when needed). The
figures are printed, and written as JSON with ``--json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import httpx

from scripts.bench import free_port

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


# -- the server --------------------------------------------------------------------------------


class Serve:
    """``taskledger serve`` on ``db`` at a free port, stopped by ``stop``."""

    def __init__(self, db: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(db.with_suffix(f".{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.cli", "serve", "--db", str(db)]
            + ["--port", str(self.port), *flags],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("serve did not answer /health")

    def status(self, field: str) -> float:
        """A ``/proc/<pid>/status`` figure of the server (``VmRSS``, ``VmHWM``) in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- building the database ---------------------------------------------------------------------


def big_output(megabytes: float) -> dict[str, Any]:
    """A Chunkr-shaped output of about ``megabytes`` MiB of JSON: chunks of one segment of
    about 1 KiB of text each."""
    text = ("taskledger benchmark output text " * 32)[:1000]

    def chunk(n: int) -> dict[str, Any]:
        segment = {
            "bbox": {"left": 10.0, "top": 20.0 + n % 40, "width": 500.0, "height": 14.0},
            "content": text,
            "html": f"<p>{text}</p>",
            "markdown": text,
            "text": text,
            "page_height": 792.0,
            "page_width": 612.0,
            "page_number": 1 + n // 40,
            "segment_id": f"s{n}",
            "segment_type": "Text",
            "confidence": 0.98,
        }
        return {"chunk_id": f"c{n}", "chunk_length": 180, "segments": [segment]}

    one = len(json.dumps(chunk(0))) + 200  # with the fields the check fills in
    count = max(1, int(megabytes * MiB / one))
    chunks = [chunk(n) for n in range(count)]
    return {
        "chunks": chunks,
        "file_name": "report.pdf",
        "page_count": 1 + count // 40,
        "pdf_url": None,
    }


async def build_async(db: Path, tasks: int, output_mb: float, input_mb: float) -> dict[str, Any]:
    from api.composition import close_service, open_service
    from api.keys import create_key
    from api.settings import Settings

    service = open_service(Settings(db_path=db, sweep_interval=0))
    try:
        user_key = create_key(service.store.records, "bench", "user")[1]
        other_key = create_key(service.store.records, "bench-input", "user")[1]
        worker_key = create_key(service.store.records, "pool", "worker")[1]
        user, other = service.authenticate(user_key), service.authenticate(other_key)
        worker = service.authenticate(worker_key)
        output = big_output(output_mb)
        sizes = []
        started = time.perf_counter()
        for n in range(tasks):
            created = await service.create(user, file=b"%PDF-1.4 bench", file_name="report.pdf")
            claimed = await service.claim(worker, "w1")
            assert claimed is not None and claimed.state.task_id == created.state.task_id
            output["chunks"][0]["chunk_id"] = f"task-{n}"  # each task its own blob
            done = await service.complete(worker, created.state.task_id, "w1", output)
            assert done.task.state.output is not None
            sizes.append(done.task.state.output.size)
        built = time.perf_counter() - started
        data = os.urandom(int(input_mb * MiB))
        big = await service.create(other, file=data, file_name="big.bin")
    finally:
        close_service(service)
    return {
        "user_key": user_key,
        "other_key": other_key,
        "input_task": big.state.task_id,
        "input_bytes": len(data),
        "output_bytes_each": round(statistics.mean(sizes)),
        "build_seconds": round(built, 1),
    }


# -- the measurements --------------------------------------------------------------------------


def timed(client: httpx.Client, path: str, rounds: int, **params: Any) -> dict[str, Any]:
    """Median and slowest wall time (ms) of ``rounds`` GETs of ``path`` after one warm-up."""
    client.get(path, params=params).raise_for_status()
    times, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(path, params=params)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return {
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "bytes": size,
        "rounds": rounds,
    }


def reads(db: Path, built: dict[str, Any], rounds: int, chunked_limit: int) -> dict[str, Any]:
    server = Serve(db)
    try:
        headers = {"Authorization": built["user_key"]}
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=300) as c:
            listed = c.get("/tasks").json()
            one = listed[0]["task_id"]
            figures = {
                "tasks_listed": len(listed),
                "default_list": timed(c, "/tasks", rounds),
                "get_without_chunks": timed(c, f"/task/{one}", rounds, include_chunks="false"),
                "rss_mb_after_reads_without_chunks": round(server.status("VmHWM"), 1),
                "get_with_chunks": timed(c, f"/task/{one}", max(3, rounds // 4)),
            }
            chunked = c.get("/tasks", params={"include_chunks": "true", "limit": chunked_limit})
            figures["list_with_chunks_status"] = chunked.status_code
            if chunked.status_code == 200:
                figures["list_with_chunks"] = timed(
                    c,
                    "/tasks",
                    max(3, rounds // 4),
                    include_chunks="true",
                    limit=chunked_limit,
                )
            else:
                figures["list_with_chunks_refusal"] = chunked.text
            figures["peak_rss_mb"] = round(server.status("VmHWM"), 1)
            figures["concurrent_lists"] = concurrent_lists(server, built, one, chunked_limit)
    finally:
        server.stop()
    return figures


def concurrent_lists(server: Serve, built: dict[str, Any], one: str, limit: int) -> dict[str, Any]:
    """Four clients listing with chunks at once (each list ``limit`` tasks), while another user
    GETs a task without chunks over and over: that user's slowest GET, and the server's peak
    RSS after."""
    headers = {"Authorization": built["user_key"]}
    other = {"Authorization": built["other_key"]}
    params: dict[str, str | int] = {"include_chunks": "true", "limit": limit}
    statuses: list[int] = []

    def listing() -> None:
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=300) as c:
            for _ in range(3):
                statuses.append(c.get("/tasks", params=params).status_code)

    threads = [threading.Thread(target=listing) for _ in range(4)]
    times = []
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=other, timeout=300) as c:
        path = f"/task/{built['input_task']}"
        c.get(path, params={"include_chunks": "false"}).raise_for_status()
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            started = time.perf_counter()
            c.get(path, params={"include_chunks": "false"}).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        for thread in threads:
            thread.join()
    return {
        "clients": 4,
        "lists_each": 3,
        "statuses": sorted(set(statuses)),
        "other_get_median_ms": round(statistics.median(times), 1),
        "other_get_max_ms": round(max(times), 1),
        "other_gets": len(times),
        "peak_rss_mb": round(server.status("VmHWM"), 1),
    }


def input_link(server: Serve, built: dict[str, Any]) -> str:
    task = httpx.get(
        f"{server.url}/api/v1/task/{built['input_task']}",
        headers={"Authorization": built["other_key"]},
        timeout=30,
    ).json()
    return str(task["configuration"]["input_file_url"])


def stalled(db: Path, built: dict[str, Any], clients: int) -> dict[str, Any]:
    """``clients`` downloads of the large input that read 64 KiB and stop reading."""
    server = Serve(db)
    try:
        link = httpx.URL(input_link(server, built))
        # One whole download first: it checks the bytes and warms the server up.
        whole = httpx.get(str(link), timeout=120)
        assert whole.status_code == 200 and len(whole.content) == built["input_bytes"]
        time.sleep(0.5)
        before = server.status("VmRSS")
        target = f"{link.raw_path.decode()}"
        sockets = []
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", server.port))
            # A small receive buffer, as a slow client's: the server must keep the rest.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            got = 0
            while got < 64 * 1024:
                piece = s.recv(64 * 1024 - got)
                if not piece:
                    break
                got += len(piece)
            sockets.append(s)
        time.sleep(2.0)
        during = server.status("VmRSS")
        for s in sockets:
            s.close()
        time.sleep(2.0)
        after = server.status("VmRSS")
    finally:
        server.stop()
    return {
        "clients": clients,
        "input_mb": round(built["input_bytes"] / MiB, 1),
        "rss_mb_before": round(before, 1),
        "rss_mb_while_stalled": round(during, 1),
        "rss_mb_after_hangup": round(after, 1),
        "held_mb_per_stalled_download": round((during - before) / clients, 2),
    }


def one_create(work: Path, megabytes: float) -> dict[str, Any]:
    """The growth of a fresh server's peak RSS over one create of ``megabytes`` MiB."""
    db = work / "create.db"
    body_mb = int(megabytes * 4 / 3) + 4
    server = Serve(db, "--max-body-mb", str(max(32, body_mb)))
    try:
        key = (db.with_name(db.name + ".admin-key")).read_text().strip()
        headers = {"Authorization": key}
        payload = os.urandom(int(megabytes * MiB))

        def create(data: bytes) -> None:
            body = {"file": base64.b64encode(data).decode(), "file_name": "big.bin"}
            response = httpx.post(
                f"{server.url}/api/v1/task/parse", json=body, headers=headers, timeout=300
            )
            response.raise_for_status()

        create(b"warm-up")  # the create route's code paths, once
        time.sleep(0.5)
        rss, peak = server.status("VmRSS"), server.status("VmHWM")
        create(payload)
        time.sleep(0.5)
        grown = server.status("VmHWM")
    finally:
        server.stop()
    return {
        "create_mb": megabytes,
        "body_mb": round(len(base64.b64encode(payload)) / MiB, 1),
        "rss_mb_before": round(rss, 1),
        "peak_mb_before": round(peak, 1),
        "peak_mb_after": round(grown, 1),
        "peak_over_rss_mb": round(grown - rss, 1),
    }


@click.command()
@click.option("--tasks", default=30, show_default=True, help="Tasks with a large output.")
@click.option("--output-mb", default=12.0, show_default=True, help="Each output's size (MiB).")
@click.option("--input-mb", default=30.0, show_default=True, help="The large input (MiB).")
@click.option("--create-mb", default=20.0, show_default=True, help="The large create (MiB).")
@click.option("--stalled", "stalled_clients", default=10, show_default=True)
@click.option("--rounds", default=20, show_default=True, help="Requests timed per read.")
@click.option("--chunked-limit", default=4, show_default=True, help="limit of the chunked list.")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Keep files here.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def main(
    tasks: int,
    output_mb: float,
    input_mb: float,
    create_mb: float,
    stalled_clients: int,
    rounds: int,
    chunked_limit: int,
    work: Path | None,
    json_out: Path | None,
) -> None:
    work = work or Path(tempfile.mkdtemp(prefix="taskledger-outputs-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "outputs.db"
    built = asyncio.run(build_async(db, tasks, output_mb, input_mb))
    report: dict[str, Any] = {
        "tasks": tasks,
        "output_mb_each": round(built["output_bytes_each"] / MiB, 2),
        "build_seconds": built["build_seconds"],
        "reads": reads(db, built, rounds, chunked_limit),
        "stalled_downloads": stalled(db, built, stalled_clients),
        "create": one_create(work, create_mb),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
