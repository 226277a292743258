"""Start a real ``taskledger serve`` on a free 127.0.0.1 port for HTTP tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from urllib.parse import urlsplit

import httpx

#: The checkout under test: ``serve`` runs its code, from whatever directory it is started in.
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        db: Path | str,
        *extra: str,
        port: int | None = None,
        file_limit: tuple[int, int] | None = None,
        workdir: Path | None = None,
    ) -> None:
        """``db``: a SQLite file's path or a PostgreSQL URL. ``file_limit``: start the server
        with that open-file limit (soft, hard), as on a host whose limits are lower than this
        one's. ``workdir``: the directory ``serve`` runs in (by default this process's), where it
        leaves the admin key of a PostgreSQL database (``<database name>.admin-key``) and this
        class the server's log; for a URL without one, a temporary directory removed with this
        object. A SQLite file's key and log go next to the file."""
        self.db = db
        self.file_limit = file_limit
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v1"
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.admin_key: str | None = None
        if workdir is None and not isinstance(db, Path):
            workdir = Path(tempfile.mkdtemp(prefix="taskledger-serve-"))
            weakref.finalize(self, shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = workdir
        if isinstance(db, Path):
            self.log_path = db.with_suffix(f".{self.port}.log")
            # On a database with no keys, serve (its stderr not a terminal here) leaves the
            # admin key it made next to the file, mode 0600, and nothing on stdout.
            self.key_file = db.with_name(db.name + ".admin-key")
        else:
            assert workdir is not None
            name = urlsplit(db).path.strip("/") or "taskledger"
            self.log_path = workdir / f"{name}.{self.port}.log"
            # ... and for a PostgreSQL database, <database name>.admin-key in its directory.
            self.key_file = workdir / f"{name}.admin-key"

    def start(self, timeout: float = 30) -> Server:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.cli",
                "serve",
                "--db",
                str(self.db),
                "--port",
                str(self.port),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=self.workdir,
            preexec_fn=None if self.file_limit is None else self._limit_files,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"taskledger serve exited with {self.proc.returncode}: "
                    + self.log_path.read_text(errors="replace")
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("taskledger serve did not answer /health in time")
        if self.key_file.exists() and self.admin_key is None:
            self.admin_key = self.key_file.read_text().strip()
        return self

    def _limit_files(self) -> None:
        import resource

        assert self.file_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.file_limit)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": key} if key else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=30)
