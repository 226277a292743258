"""Several ``taskledger serve`` processes (nodes) on one PostgreSQL ledger, for the multi-node
tests: a small launcher (each node's working directory, log file and the admin-key file the first
one writes there), and looks into the shared ledger through ``Store(url)`` (the log, the tasks
table) and ``taskledger verify --db URL``.

Every wait is a poll with a generous deadline; a deadline that runs out fails the test with what
was last seen, never hangs it.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.composition import Store
from ledger.events import tag_of
from ledger.log import RecordedEvent
from tests.inprocess import add_key
from tests.server import free_port
from tests.support import wait_for  # noqa: F401 - for the test modules

ROOT = Path(__file__).resolve().parents[2]
FILE = base64.b64encode(b"hello from several nodes\n").decode()
#: One TLS context for every client the tests make: httpx would otherwise load the CA bundle
#: for each new client (tens of milliseconds each; the races make hundreds of clients).
TLS = ssl.create_default_context()


def _env() -> dict[str, str]:
    """The test process's environment, with this checkout first on the import path: the nodes
    run in directories of their own, and must run this code, not an installed copy."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
    }


class Node:
    """One ``taskledger serve --db URL`` on a free 127.0.0.1 port, run in ``workdir`` (where a
    first node on an empty database leaves ``<database name>.admin-key``), its stderr in
    ``node<n>.log`` there. ``start`` launches it; ``ready`` waits for /health. A node killed
    with ``kill`` starts again on the same port."""

    def __init__(self, n: int, db_url: str, workdir: Path, flags: Sequence[str]) -> None:
        self.n = n
        self.db_url = db_url
        self.workdir = workdir
        self.flags = tuple(flags)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v1"
        self.log_path = workdir / f"node{n}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> Node:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.cli",
                "serve",
                "--db",
                self.db_url,
                "--port",
                str(self.port),
                "--log-json",
                *self.flags,
            ],
            cwd=self.workdir,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        return self

    def ready(self, timeout: float = 60) -> Node:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1, verify=TLS) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"node {self.n} exited with {self.proc.returncode}: "
                        + self.log_path.read_text(errors="replace")[-3000:]
                    )
                try:
                    if probe.get(f"{self.url}/health").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"node {self.n} did not answer /health within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no rollback from the node's side (PostgreSQL sees the
        connections drop)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def terminate(self) -> None:
        """SIGTERM: the node finishes what it is doing and stops (``stop`` waits for it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self, key: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": key}, timeout=timeout, verify=TLS
        )

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


class Cluster:
    """Three (``size``) nodes on one fresh ledger (a schema of the session's test database),
    started together; the keys the tests use; ``store``, the test's own view of the ledger."""

    def __init__(self, db_url: str, workdir: Path, flags: Sequence[str], size: int = 3) -> None:
        self.db_url = db_url
        self.workdir = workdir
        self.nodes = [Node(n, db_url, workdir, flags) for n in range(size)]
        self.store: Store | None = None
        self.keys: dict[str, str] = {}

    def start(self) -> Cluster:
        # All at once: they race to create the schema and the first admin key.
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.ready()
        self.store = Store(self.db_url)
        key_files = list(self.workdir.glob("*.admin-key"))
        assert len(key_files) == 1, f"one admin-key file from the three nodes, not {key_files}"
        assert self.store.records.count_keys() == 1, "exactly one node made the admin key"
        self.keys = {
            "admin": key_files[0].read_text().strip(),
            "alice": add_key(self.db_url, "alice"),
            "bob": add_key(self.db_url, "bob"),
            "worker": add_key(self.db_url, "pool", "worker"),
        }
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.terminate()  # all at once, then wait for each
        for node in self.nodes:
            node.stop()
        if self.store is not None:
            self.store.close()

    # -- the shared ledger, as the test sees it ------------------------------------------

    @property
    def log(self) -> Any:
        assert self.store is not None
        return self.store.log

    def events(self, after: int = 0) -> list[RecordedEvent]:
        return list(self.log.iter_all(after))

    def last_position(self) -> int:
        return int(self.log.last_position())

    def streams(self) -> dict[str, list[RecordedEvent]]:
        """Every task's events in version order, by task id."""
        found: dict[str, list[RecordedEvent]] = {}
        for recorded in self.events():
            found.setdefault(recorded.stream_id.removeprefix("task-"), []).append(recorded)
        for events in found.values():
            events.sort(key=lambda r: r.version)
        return found

    def statuses(self) -> dict[str, str]:
        return dict(self.log.fetchall("SELECT task_id, status FROM tasks"))

    def count_types(self, task_ids: Iterable[str] | None = None) -> Counter[str]:
        wanted = None if task_ids is None else set(task_ids)
        return Counter(
            type_of(r)
            for r in self.events()
            if wanted is None or r.stream_id.removeprefix("task-") in wanted
        )

    def assert_log_sound(self, *, verify: bool = True) -> None:
        """Positions 1..N without a gap or a repeat, every stream's versions 1..n, and (unless
        ``verify`` is False) ``taskledger verify --db URL`` (the hash chain and every
        projection) exit code 0."""
        events = self.events()
        assert [r.position for r in events] == list(range(1, len(events) + 1))
        versions: dict[str, list[int]] = {}
        for recorded in events:
            versions.setdefault(recorded.stream_id, []).append(recorded.version)
        for stream, seen in versions.items():
            assert seen == list(range(1, len(seen) + 1)), f"{stream}: versions {seen}"
        if verify:
            result = run_verify(self.db_url)
            assert result.returncode == 0, result.stdout + result.stderr

    def drain_queue(self) -> int:
        """Claim whatever is claimable (no wait) until the queue is empty; how many."""
        drained = 0
        with self.nodes[0].client(self.keys["worker"]) as worker:
            while True:
                answer = worker.post("/worker/claim", json={"worker_id": f"drain-{drained}"})
                if answer.status_code == 204:
                    return drained
                assert answer.status_code == 200, answer.text
                drained += 1


@dataclass
class Acks:
    """Every write a client was told succeeded (a 2xx), by kind, and what else came back."""

    created: dict[str, int] = field(default_factory=dict)  # task id -> the node that took it
    cancelled: set[str] = field(default_factory=set)
    claimed: dict[str, str] = field(default_factory=dict)  # task id -> worker id
    by_node: Counter[int] = field(default_factory=Counter)  # acknowledged writes per node
    sent: int = 0
    refused: int = 0  # clean 4xx answers and 204s (lost races, an empty queue)
    failed: int = 0  # sent, and no answer came: the node was killed with it in flight
    down: int = 0  # not sent: the node was down (connection refused)
    errors: list[str] = field(default_factory=list)  # answers no write may get (5xx, ...)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return len(self.created) + len(self.cancelled) + len(self.claimed)


def load(
    cluster: Cluster, acks: Acks, stop: threading.Event, *, threads: int, seed: int
) -> list[threading.Thread]:
    """Started client threads that keep creating tasks (alice's and bob's), cancelling some
    they created and claiming others (leases of an hour), each request on a node picked at
    random, until ``stop`` is set. Each 2xx is recorded in ``acks`` before the next request;
    a request that gets no answer (its node killed) is counted as failed and the thread goes
    on with another node."""

    def run(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        owner = "alice" if k % 2 == 0 else "bob"
        users = [node.client(cluster.keys[owner], timeout=10) for node in cluster.nodes]
        workers = [node.client(cluster.keys["worker"], timeout=10) for node in cluster.nodes]
        mine: list[str] = []
        ops = 0
        try:
            while not stop.is_set():
                ops += 1
                n = rng.randrange(len(cluster.nodes))
                roll = rng.random()
                with acks.lock:
                    acks.sent += 1
                try:
                    if roll < 0.5 or not mine:
                        answer = users[n].post(
                            "/task/parse", json={"file": FILE, "file_name": f"{owner}.txt"}
                        )
                        if answer.status_code == 200:
                            task_id = answer.json()["task_id"]
                            with acks.lock:
                                acks.created[task_id] = n
                                acks.by_node[n] += 1
                            mine.append(task_id)
                            continue
                    elif roll < 0.75:
                        task_id = mine.pop(rng.randrange(len(mine)))
                        answer = users[n].get(f"/task/{task_id}/cancel")
                        if answer.status_code == 200:
                            with acks.lock:
                                acks.cancelled.add(task_id)
                                acks.by_node[n] += 1
                            continue
                    else:
                        worker_id = f"load{seed}-{k}-{ops}"
                        answer = workers[n].post(
                            "/worker/claim", json={"worker_id": worker_id, "lease_seconds": 3600}
                        )
                        if answer.status_code == 200:
                            with acks.lock:
                                acks.claimed[answer.json()["task_id"]] = worker_id
                                acks.by_node[n] += 1
                            continue
                    with acks.lock:
                        if 200 <= answer.status_code < 500:
                            acks.refused += 1
                        else:
                            acks.errors.append(f"{answer.status_code}: {answer.text[:200]}")
                except httpx.ConnectError:
                    with acks.lock:
                        acks.down += 1
                    time.sleep(0.02)
                except httpx.TransportError:
                    with acks.lock:
                        acks.failed += 1
        finally:
            for client in users + workers:
                client.close()

    started = [
        threading.Thread(target=run, args=(k,), name=f"load{seed}-{k}") for k in range(threads)
    ]
    for thread in started:
        thread.start()
    return started


def type_of(recorded: RecordedEvent) -> str:
    return tag_of(type(recorded.event))


def run_verify(db_url: str) -> subprocess.CompletedProcess[str]:
    """``taskledger verify --db URL``."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", "verify", "--db", db_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_env(),
        check=False,  # the caller reads the exit code
    )


def create(client: httpx.Client, name: str = "t.txt") -> str:
    answer = client.post("/task/parse", json={"file": FILE, "file_name": name})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["task_id"])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
