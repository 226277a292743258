"""The reference worker: claims tasks over HTTP, heartbeats while it works, and completes or
fails them. SIGTERM (or Ctrl-C) stops claiming; a task in hand is finished, or released back to
the queue if it was claimed after the signal; then the process exits 0."""

from __future__ import annotations

import re
import signal
import socket
import threading
import uuid
from typing import Any

import httpx
import msgspec
import structlog

from scripts.processors import OutputTooLarge, ProcessingError, Processor, encode_output

log = structlog.get_logger("taskledger.worker")

#: Request bodies: an output already encoded (msgspec.Raw) goes in as it is, not re-encoded.
_encode = msgspec.json.Encoder().encode


def _limit_in(message: str) -> int | None:
    """The limit a 413's message names ("Request body is too large (limit N bytes)")."""
    found = re.search(r"limit (\d+) bytes", message)
    return int(found.group(1)) if found else None


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api/v1") else f"{url}/api/v1"


class Worker:
    def __init__(
        self,
        url: str,
        key: str,
        processor: Processor,
        *,
        worker_id: str | None = None,
        concurrency: int = 1,
        lease_seconds: int = 60,
        wait_seconds: int = 5,
        max_output_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.base = api_base(url)
        self.key = key
        self.processor = processor
        self.worker_id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.concurrency = max(1, concurrency)
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        #: The largest output sent (the server's --max-output-mb, by default the same): a task
        #: whose output is bigger fails with "Output too large" instead of being sent.
        self.max_output_bytes = max_output_bytes
        self.stopping = threading.Event()
        self.processed = 0

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            headers={"Authorization": self.key},
            timeout=httpx.Timeout(30, read=self.wait_seconds + 30),
        )

    def stop(self, *_: Any) -> None:
        if not self.stopping.is_set():
            log.info("worker_stopping", worker_id=self.worker_id)
        self.stopping.set()

    def run(self, *, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        log.info(
            "worker_started", worker_id=self.worker_id, url=self.base, concurrency=self.concurrency
        )
        threads = [
            threading.Thread(target=self.loop, args=(f"{self.worker_id}/{n}",), daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)
        log.info("worker_stopped", worker_id=self.worker_id, processed=self.processed)
        return 0

    def loop(self, slot_id: str) -> None:
        backoff = 0.5
        task: dict[str, Any] | None = None  # handed over by the last finish (claim_next)
        with self.client() as client:
            while not self.stopping.is_set():
                if task is not None:
                    task = self.work(client, task, slot_id)
                    continue
                try:
                    response = client.post(
                        "/worker/claim",
                        json={
                            "worker_id": slot_id,
                            "lease_seconds": self.lease_seconds,
                            "wait_seconds": self.wait_seconds,
                        },
                    )
                except httpx.HTTPError as exc:
                    log.warning("claim_failed", error=str(exc))
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                backoff = 0.5
                if response.status_code == 204:
                    continue
                if response.status_code != 200:
                    log.warning(
                        "claim_refused", status=response.status_code, body=response.text[:200]
                    )
                    self.stopping.wait(2)
                    continue
                task = response.json()
            if task is not None:  # claimed just as the worker was told to stop
                self.release(client, task["task_id"], slot_id)

    def post(self, client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """POST that survives a passing network error (three tries); None if the server stayed
        out of reach (the lease then runs out and the task is re-queued)."""
        for attempt in range(3):
            try:
                return client.post(
                    path, content=_encode(body), headers={"Content-Type": "application/json"}
                )
            except httpx.HTTPError as exc:
                log.warning("post_failed", path=path, attempt=attempt + 1, error=str(exc))
                self.stopping.wait(0.5 * 2**attempt)
        return None

    def release(self, client: httpx.Client, task_id: str, slot_id: str) -> None:
        response = self.post(client, f"/task/{task_id}/release", {"worker_id": slot_id})
        log.info("task_released", task_id=task_id, status=response and response.status_code)

    def work(
        self, client: httpx.Client, task: dict[str, Any], slot_id: str
    ) -> dict[str, Any] | None:
        """Process one task and finish it. Unless the worker is stopping, the finish also claims
        the next task (``claim_next``), saving a round trip: that task is returned."""
        task_id = task["task_id"]
        lost = threading.Event()
        done = threading.Event()
        beat = threading.Thread(
            target=self.heartbeat, args=(task_id, slot_id, done, lost), daemon=True
        )
        beat.start()
        try:
            path, body = self.outcome(client, task, slot_id)
        finally:
            done.set()
            beat.join()
        if lost.is_set():
            log.warning("lease_lost", task_id=task_id)
            return None
        if path != "release" and not self.stopping.is_set():
            body = {**body, "claim_next": True, "lease_seconds": self.lease_seconds}
        response = self.post(client, f"/task/{task_id}/{path}", body)
        if response is not None and path == "complete" and response.status_code == 413:
            # The server's limit is below this worker's: the output can never be sent.
            size = len(body["output"])
            limit = _limit_in(response.text)
            log.warning("output_too_large", task_id=task_id, size=size, limit=limit)
            error = f"Output too large ({size} bytes, limit {limit or 'unknown'} bytes)"
            body = {**body, "error": error}
            del body["output"]
            path = "fail"
            response = self.post(client, f"/task/{task_id}/fail", body)
        elif response is not None and path == "complete" and response.status_code == 400:
            # The server refused the processor's output (it names the field): trying again
            # would produce the same output, so the task fails with that reason.
            log.warning("output_refused", task_id=task_id, body=response.text[:200])
            path = "fail"
            error = f"Processing error: the output was refused: {response.text}"[:10_000]
            body = {**body, "error": error}
            del body["output"]
            response = self.post(client, f"/task/{task_id}/fail", body)
        if response is not None and response.status_code == 200:
            self.processed += path != "release"
            log.info("task_finished", task_id=task_id, outcome=path)
            return response.json().get("next") if path != "release" else None
        if response is not None:
            log.warning(
                "finish_refused",
                task_id=task_id,
                status=response.status_code,
                body=response.text[:200],
            )
        return None

    def outcome(
        self, client: httpx.Client, task: dict[str, Any], slot_id: str
    ) -> tuple[str, dict[str, Any]]:
        """Fetch the input and run the processor: which route finishes the task, with what."""
        task_id = task["task_id"]
        try:
            response = client.get(f"/task/{task_id}/input")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            # Not the task's fault: give it back for another try.
            log.warning("input_unavailable", task_id=task_id, error=str(exc))
            return "release", {"worker_id": slot_id}
        file_name = (task.get("output") or {}).get("file_name")
        try:
            output = self.processor(response.content, file_name, task.get("configuration") or {})
            del response  # the input: the processor has what it needs
            # A streamed output's chunks are made (and may raise) while it is encoded.
            encoded = encode_output(output, self.max_output_bytes)
        except (ProcessingError, OutputTooLarge) as exc:
            return "fail", {"worker_id": slot_id, "error": str(exc)}
        except Exception as exc:
            log.exception("processor_error", task_id=task_id)
            return "fail", {"worker_id": slot_id, "error": f"Processing error: {exc}"}
        return "complete", {"worker_id": slot_id, "output": msgspec.Raw(encoded)}

    def heartbeat(
        self, task_id: str, slot_id: str, done: threading.Event, lost: threading.Event
    ) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        with self.client() as client:
            while not done.wait(interval):
                try:
                    response = client.post(
                        f"/task/{task_id}/heartbeat",
                        json={"worker_id": slot_id, "lease_seconds": self.lease_seconds},
                    )
                except httpx.HTTPError as exc:
                    log.warning("heartbeat_failed", task_id=task_id, error=str(exc))
                    continue
                if response.status_code == 409:
                    lost.set()
                    return
