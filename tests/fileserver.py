"""A small HTTP server on 127.0.0.1 (a free port) for the download tests, run on threads of the
test process: each path answers as the case it stands for, and every request is recorded.

| path | answer |
| --- | --- |
| ``/doc.md`` | 200, ``DOC`` |
| ``/named`` | 200, ``DOC``, ``Content-Disposition``: ``filename*`` (résumé.md), ``filename`` |
| ``/sneaky`` | 200, ``DOC``, a ``Content-Disposition`` name with directories and a line feed |
| ``/hops/N/doc.md`` | 302 to ``/hops/N-1/doc.md`` (relative), ``DOC`` at 0: N redirects |
| ``/missing`` | 404 |
| ``/empty`` | 200, no body |
| ``/endless`` | 200, no length, 16 KiB chunks until the client goes (64 MiB at most) |
| ``/declared-huge`` | 200 with ``Content-Length: 10**12``, no body |
| ``/slow`` | 200, ``Content-Length: 1000``, one byte every 0.1 s |
| ``/pause`` | 200, ``DOC``, after half a second (``peak`` counts such requests at once) |
| ``/cookie`` | 200, ``DOC``, ``Set-Cookie`` |
| ``/echo`` | 200, the request's headers as text |
| ``/to-ftp`` | 302 to an ``ftp:`` URL |
| ``/to-credentials`` | 302 to this server's ``/doc.md`` with a user name and password |
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

DOC = b"# Notes\n\nA short Markdown file, served over HTTP.\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.requests.append((self.path, str(self.headers)))
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.in_flight += 1
            owner.peak = max(owner.peak, owner.in_flight)
        try:
            self._answer(path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (it was told to, past a limit or a deadline)
        finally:
            with owner.lock:
                owner.in_flight -= 1

    def _answer(self, path: str) -> None:
        if path == "/doc.md":
            self._send(200, DOC, Content_Type="text/markdown")
        elif path == "/named":
            self._send(
                200,
                DOC,
                Content_Disposition='attachment; filename="resume.md"; '
                "filename*=UTF-8''r%C3%A9sum%C3%A9.md",
            )
        elif path == "/sneaky":
            self._send(
                200,
                DOC,
                Content_Disposition="attachment; filename*=UTF-8''..%2F..%2Fetc%2Fbad%0Aname.md",
            )
        elif path.startswith("/hops/"):
            hops = int(path.split("/")[2])
            if hops == 0:
                self._send(200, DOC)
            else:
                self._send(302, Location=f"/hops/{hops - 1}/doc.md")
        elif path == "/missing":
            self._send(404, b"not here")
        elif path == "/empty":
            self._send(200)
        elif path == "/endless":
            self.send_response(200)
            self.end_headers()
            chunk = b"x" * 16384
            for _ in range(4096):
                self.wfile.write(chunk)
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/pause":
            time.sleep(0.5)
            self._send(200, DOC, Content_Type="text/markdown")
        elif path == "/cookie":
            self._send(200, DOC, Set_Cookie="session=secret; Path=/")
        elif path == "/echo":
            self._send(200, str(self.headers).encode())
        elif path == "/to-ftp":
            self._send(302, Location="ftp://127.0.0.1/doc.md")
        elif path == "/to-credentials":
            port = self.server.server_address[1]
            self._send(302, Location=f"http://user:secret@127.0.0.1:{port}/doc.md")
        else:
            self._send(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: socketserver's default listen backlog is 5: a sixth connection at once waits for a SYN
    #: retransmission (a second).
    request_queue_size = 64
    owner: FileServer


class FileServer:
    """The server; ``url`` is its base (``http://127.0.0.1:<port>``), ``requests`` the (path,
    headers) of every request it got, in order."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        #: Requests being answered now, and the most there ever were at once.
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
