"""How long an authenticated GET waits while idle connections are held open against a real
``taskledger serve`` (issue 14, item 7: 1,100 idle unauthenticated connections on a host whose
open-file limit is 1024 denied all service).

    python -m scripts.bench_connections
    python -m scripts.bench_connections --checkout /path/to/another/checkout   # e.g. before

For each scenario it starts a server on a fresh database (with its open-file limit set to
``--file-limit`` (soft and hard) when given, as on such a host, and left as this machine's
otherwise), opens ``--idle`` connections to it that send nothing ("silent") or half a request
head ("half"), and then, with all of them still held open, times a new authenticated
``GET /api/v1/tasks`` on a new connection: retried every 0.1 s, as a client would, until it is
answered 200 or 30 s pass. Then five more GETs, one after the other. It prints, per scenario: the
server's open-file limit and its descriptors at the peak, how many idle connections were open
when the GET was sent and how many the server had closed by the end, the time to the first 200
and the attempts it took, and the five GETs' median and maximum. This process raises its own
open-file limit to its hard limit to hold the connections.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from scripts.bench import free_port

ROOT = Path(__file__).resolve().parents[1]
GIVE_UP = 30.0


@dataclass
class Figures:
    scenario: str
    file_limit: str
    peak_fds: int
    idle_open: int
    closed_by_server: int
    first_answer_s: float | None
    attempts: int
    outcome: str
    then_median_ms: float | None
    then_max_ms: float | None
    before_median_ms: float


@contextlib.contextmanager
def server(checkout: Path, work: Path, file_limit: int | None, args: list[str]) -> Iterator[Any]:
    db = work / "bench.db"
    port = free_port()

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

    log = open(work / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "serve", "--db", str(db), "--port", str(port)]
        + ["--sweep-interval", "0", "--log-json", *args],
        cwd=checkout,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=limit,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit((work / "server.log").read_text())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        key = (work / "bench.db.admin-key").read_text().strip()
        yield proc, url, port, key
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def open_files(pid: int) -> tuple[str, int]:
    """The server's open-file limit, and the descriptors it holds (the largest of its processes:
    with ``--workers N`` each worker process has its own limit and cap)."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    held = max(len(os.listdir(f"/proc/{p}/fd")) for p in [pid, *map(int, children)])
    return (soft if soft == hard else f"{soft} (hard {hard})"), held


def still_open(sock: socket.socket) -> bool:
    """Not closed by the server (an answer it sent before closing is read and dropped)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


#: One client for every GET, keeping no connection: each GET is a new connection, as a new
#: client's would be, without httpx's per-client set-up (~20 ms) in the figure.
CLIENT = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def get(url: str, key: str, timeout: float) -> httpx.Response:
    return CLIENT.get(f"{url}/api/v1/tasks", headers={"Authorization": key}, timeout=timeout)


def five_gets(url: str, key: str) -> list[float]:
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        with contextlib.suppress(httpx.HTTPError):
            if get(url, key, GIVE_UP).status_code == 200:
                times.append((time.monotonic() - t0) * 1000)
    return times


def scenario(
    checkout: Path, idle: int, mode: str, file_limit: int | None, args: list[str]
) -> Figures:
    work = Path(tempfile.mkdtemp(prefix="taskledger-conns-"))
    with server(checkout, work, file_limit, args) as (proc, url, port, key):
        assert get(url, key, 10).status_code == 200
        before = five_gets(url, key)
        held: list[socket.socket] = []
        peak = 0
        try:
            for i in range(idle):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    if mode == "half":
                        sock.sendall(b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                except OSError as exc:
                    print(f"  connection {i + 1} failed: {exc}", file=sys.stderr)
                    continue
                held.append(sock)
            time.sleep(0.2)  # let the server accept what it will
            limit_text, peak = open_files(proc.pid)
            idle_open = sum(still_open(sock) for sock in held)

            started = time.monotonic()
            attempts, outcome, first = 0, "", None
            while time.monotonic() - started < GIVE_UP:
                attempts += 1
                try:
                    response = get(url, key, GIVE_UP - (time.monotonic() - started))
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                else:
                    outcome = str(response.status_code)
                    if response.status_code == 200:
                        first = time.monotonic() - started
                        break
                time.sleep(0.1)
            then = five_gets(url, key) if first is not None else []
            peak = max(peak, open_files(proc.pid)[1])
            closed = sum(not still_open(sock) for sock in held)
        finally:
            for sock in held:
                sock.close()
    return Figures(
        scenario=f"{len(held)} {mode}",
        file_limit=limit_text,
        peak_fds=peak,
        idle_open=idle_open,
        closed_by_server=closed,
        first_answer_s=first,
        attempts=attempts,
        outcome=outcome,
        then_median_ms=statistics.median(then) if then else None,
        then_max_ms=max(then) if then else None,
        before_median_ms=statistics.median(before),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1100, help="idle connections to hold open")
    parser.add_argument(
        "--file-limit",
        type=int,
        action="append",
        help="the server's open-file limit (soft and hard); repeatable; 0: this machine's "
        "(default: 1024 and 0)",
    )
    parser.add_argument("--mode", choices=["silent", "half"], action="append")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code to serve")
    parser.add_argument("serve_args", nargs="*", help="more `taskledger serve` options (after --)")
    options = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < options.idle + 64:
        raise SystemExit(f"this process may open {hard} files: too few for {options.idle}")

    rows = []
    for file_limit in options.file_limit or [1024, 0]:
        for mode in options.mode or ["silent", "half"]:
            figures = scenario(
                options.checkout.resolve(),
                options.idle,
                mode,
                file_limit or None,
                options.serve_args,
            )
            rows.append(figures)
            print(figures, flush=True)

    print(f"\ncode served: {options.checkout.resolve()}; serve options: {options.serve_args}")
    print(
        "| idle connections | server's open-file limit | peak fds (per process) "
        "| open when the GET was sent | closed by the server by the end | first 200 after "
        "| attempts (last answer) "
        "| then: median / max | with no idle connections: median |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for f in rows:
        first = (
            f"{f.first_answer_s * 1000:.1f} ms"
            if f.first_answer_s is not None
            else (f"not in {GIVE_UP:.0f} s")
        )
        then = (
            f"{f.then_median_ms:.1f} / {f.then_max_ms:.1f} ms"
            if f.then_median_ms is not None and f.then_max_ms is not None
            else "-"
        )
        print(
            f"| {f.scenario} | {f.file_limit} | {f.peak_fds} | {f.idle_open} | "
            f"{f.closed_by_server} | {first} | {f.attempts} ({f.outcome}) | {then} "
            f"| {f.before_median_ms:.1f} ms |"
        )


if __name__ == "__main__":
    main()
