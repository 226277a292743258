"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 (a thread of the test process)
that keeps every request it gets, answers as the test tells it, and counts the requests of one
``webhook-id`` in progress at once."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec


class Received(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class Receiver:
    """``answer(received) -> (status, body)`` decides each answer (200 by default); ``delay``
    seconds pass before it is sent."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer: Callable[[Received], tuple[int, bytes]] = lambda r: (200, b"ok")
        self.delay = 0.0
        self.lock = threading.Lock()
        self.in_progress: dict[str, int] = defaultdict(int)
        #: The most requests of one webhook-id it ever had in progress at once.
        self.most_at_once = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                got = Received(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.time(),
                )
                key = got.headers.get("webhook-id", "")
                with receiver.lock:
                    receiver.in_progress[key] += 1
                    receiver.most_at_once = max(receiver.most_at_once, receiver.in_progress[key])
                    receiver.received.append(got)
                try:
                    if receiver.delay:
                        time.sleep(receiver.delay)
                    status, reply = receiver.answer(got)
                    self.send_response(status)
                    self.send_header("content-length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender is gone (killed, or gave up waiting)
                finally:
                    with receiver.lock:
                        receiver.in_progress[key] -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)
