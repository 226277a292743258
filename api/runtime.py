"""What the API holds while it runs: the store, the group-commit writer, key lookups, and the one
path every mutating request takes (idempotency, envelope, group commit, response)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Response

from api import idempotency, keys
from api.call import Call
from api.readpool import ReadPool
from api.schemas import BadRequest
from api.settings import Settings
from ledger.commands import AnyCommand
from ledger.handler import CommandSource, Outcome
from ledger.handler import Request as CommandRequest
from ledger.log import Actor, Envelope
from ledger.state import TaskState
from ledger.writer import Writer
from projections.queue import claimable
from projections.store import Store


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Reply:
    """A response as bytes, so it can be stored for an idempotent retry and sent as is."""

    status_code: int
    media_type: str
    body: bytes

    def to_response(self, headers: dict[str, str] | None = None) -> Response[Any]:
        return Response(
            content=self.body,
            status_code=self.status_code,
            media_type=self.media_type,
            headers=headers,
        )


def json_reply(value: Any, status_code: int = 200) -> Reply:
    return Reply(status_code, "application/json", msgspec.json.encode(value))


def text_reply(text: str, status_code: int = 200) -> Reply:
    return Reply(status_code, "text/plain", text.encode())


class Forbidden(Exception):
    """The key is valid but its role may not do this (403)."""


class RateLimited(Exception):
    """Too many requests for this key; ``retry_after`` is how many seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("Rate limit exceeded; retry later")
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second on average, bursts up to ``burst``.
    Counted per server process."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        now_ = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now_))
            tokens = min(float(self.burst), tokens + (now_ - last) * self.rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now_)
                raise RateLimited(max(1, int((1 - tokens) / self.rate + 0.999)))
            self._buckets[key_id] = (tokens - 1, now_)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """Authenticated callers for a short while, so a burst of requests does one lookup per key.
    Revocation takes effect within ``ttl`` seconds."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, keys.Caller]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> keys.Caller | None:
        with self._lock:
            entry = self._entries.get(_digest(key))
        if entry and entry[0] > time.monotonic():
            return entry[1]
        return None

    def put(self, key: str, caller: keys.Caller) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            # Held by digest, so no plaintext key sits in the server's memory longer than a request.
            self._entries[_digest(key)] = (time.monotonic() + self.ttl, caller)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(
            settings.db_path,
            synchronous=settings.synchronous,
            schemas=(idempotency.SCHEMA,),
            clock=now,
        )
        with self.store.log.transaction() as tx:
            keys.ensure_table(tx)
        self.writer = Writer(self.store.handler)
        self.writer.start()
        #: Request reads (one indexed row each) run here, off the event loop.
        self.reads = ReadPool()
        self.key_cache = KeyCache()
        self.rate_limiter = (
            RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
            if settings.rate_limit_per_second
            else None
        )
        #: Set whenever this process makes a task claimable, to wake long-polling claims.
        self.queue_changed = asyncio.Event()

    def close(self) -> None:
        self.reads.close()
        self.writer.stop()
        self.store.close()

    # -- auth --------------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> keys.Caller:
        key = keys.parse_authorization(header)
        caller = self.key_cache.get(key)
        if caller is None:
            caller = keys.authenticate(self.store.log.reader(), key)
            self.key_cache.put(key, caller)
        if self.rate_limiter is not None:
            self.rate_limiter.check(caller.key_id)
        return caller

    # -- reads -------------------------------------------------------------------------------

    def output_of(self, state: TaskState, conn: Any = None) -> dict[str, Any] | None:
        """The decoded output blob of a task, or None (no output yet, or purged)."""
        if state.output is None:
            return None
        data = self.store.log.get_blob(state.output, conn=conn)
        return msgspec.json.decode(data) if data else None

    # -- writes ------------------------------------------------------------------------------

    async def execute(
        self,
        call: Call,
        caller: keys.Caller,
        command: CommandSource,
        respond: Callable[[Outcome, Any], Reply],
        *,
        blobs: Sequence[bytes] = (),
        body: bytes = b"",
        precheck: Callable[[], object] | None = None,
        fields: dict[str, Any] | None = None,
        idempotent: bool = True,
    ) -> Reply:
        """Run a command through group commit and answer it, honouring Idempotency-Key.

        ``respond`` builds the reply inside the transaction (it gets the transaction handle for
        reads that must see the command's own writes), so an idempotent retry gets the very same
        bytes. ``precheck`` runs on the read pool before the command (and after an idempotent
        replay), for checks that need the clock, which the decider never reads. The outcome goes
        on the request's log line (``call.fields``, or ``fields`` when given). A second command
        in the same request (a claim after a complete) passes ``idempotent=False``: the request's
        Idempotency-Key belongs to its first command."""
        fields = call.fields if fields is None else fields
        idem_key = call.headers.get("idempotency-key") if idempotent else None
        stored_fp = None
        if idem_key is not None:
            idem_key = idem_key.strip()
            if not idem_key or len(idem_key) > idempotency.MAX_KEY_LENGTH:
                raise BadRequest(
                    f"Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} characters"
                )
            stored_fp = idempotency.fingerprint(call.method, call.path, body)
            replay = self._replay(caller, idem_key, stored_fp)
            if replay is not None:
                fields["outcome"] = "replayed"
                return replay
        if precheck is not None:
            # After the replay lookup: a retry of a delete must get its original answer even
            # though the task is gone now.
            await self.reads.run(precheck)

        def after_append(tx: Any, outcome: Outcome) -> Reply:
            reply = respond(outcome, tx)
            if idem_key is not None and stored_fp is not None:
                idempotency.record(
                    tx,
                    caller.key_id,
                    idem_key,
                    idempotency.StoredResponse(
                        fingerprint=stored_fp,
                        status_code=reply.status_code,
                        media_type=reply.media_type,
                        body=reply.body,
                    ),
                )
            return reply

        envelope = Envelope(
            recorded_at=now(),
            actor=Actor(key_id=caller.key_id, role=caller.role),
            request_id=call.request_id,
            idempotency_key=idem_key,
        )
        job = CommandRequest(
            command=command, envelope=envelope, blobs=tuple(blobs), after_append=after_append
        )
        fields["command"] = type(command).__name__ if not callable(command) else "ClaimTask"
        try:
            outcome = await self.writer.submit_async(job)
        except idempotency.AlreadyRecorded:
            assert idem_key is not None and stored_fp is not None
            replay = self._replay(caller, idem_key, stored_fp)
            assert replay is not None
            fields["outcome"] = "replayed"
            return replay
        except Exception as exc:
            fields["outcome"] = type(exc).__name__
            raise
        fields["task_id"] = outcome.after.task_id
        fields["outcome"] = "appended" if outcome.recorded else "unchanged"
        fields["events"] = len(outcome.recorded)
        self._notify(outcome)
        return outcome.extra

    def _replay(self, caller: keys.Caller, idem_key: str, fp: str) -> Reply | None:
        stored = idempotency.lookup(self.store.log.reader(), caller.key_id, idem_key)
        if stored is None:
            return None
        if stored.fingerprint != fp:
            raise idempotency.IdempotencyMismatch()
        return Reply(stored.status_code, stored.media_type, stored.body)

    async def run_system(self, command: AnyCommand) -> Outcome:
        """A command the server itself issues (the sweepers)."""
        job = CommandRequest(command=command, envelope=Envelope(recorded_at=now()))
        outcome = await self.writer.submit_async(job)
        self._notify(outcome)
        return outcome

    def _notify(self, outcome: Outcome) -> None:
        """Wake the claims waiting in this process when a task has become claimable."""
        if outcome.recorded and claimable(outcome.after):
            changed, self.queue_changed = self.queue_changed, asyncio.Event()
            changed.set()
