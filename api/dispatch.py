"""The webhook dispatcher: one per server process, on a thread (and event loop) of its own, so
the API's event loop never waits on a receiver.

The outbox rows (``ledger.log.Delivery``) are written in the transaction of the command whose
event they announce (``projections.webhooks.OutboxProjection``), so no committed change is ever
without its deliveries. The dispatcher:

1. looks for a due delivery with a read (``next_due``): after each commit of this process that
   wrote deliveries (the writer tells it), when another process commits (PostgreSQL's
   LISTEN/NOTIFY), when a retry is asked for, and at least once a second (another process on a
   SQLite file);
2. leases up to as many due deliveries as it has free places (``webhook_concurrency``) in one
   write transaction, each until three times ``webhook_timeout`` from now. A leased delivery
   is nobody else's to send: several processes never send the same attempt at once. A lease
   whose process died lapses, and the delivery is sent again (at least once, never lost).
   A delivery waits while an earlier one of the same subscription and task is pending, so a
   receiver gets each task's events in order;
3. posts each one (``api.poster``: HTTP/1.1 with keep-alive, ``webhook_timeout`` for the whole
   attempt, no redirects followed, at most 64 KiB of the answer read, the address checked
   where the connection is made unless ``--allow-private-webhooks``), Standard Webhooks
   headers, the body the task as it was right after the event (``state_at`` its version) as
   ``GET /api/v1/task/{id}`` answers it without chunks;
4. records the attempts that ended, and leases the next, in one chore of the group-commit
   writer (its writes ride a batch's transaction): a 2xx delivers it; a network
   error, a 5xx or a 429 is tried again after about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h,
   then 6 h each (times ``webhook_backoff_scale``, +-20% jitter) until ``webhook_max_attempts``
   attempts in all; any other
   answer fails it at once. A subscription whose last ``webhook_disable_after`` deliveries all
   failed is disabled (a ``webhook_disabled`` event, with the reason).

Webhooks are background work: while the API is busy (the writer's last batch held several
commands, or more wait), the dispatcher starts no post once it has used SHARE of a core (its
own thread's CPU and its chores' on the writer's) over the last WINDOW seconds. Deliveries then
fall behind for as long as the load lasts and catch up as it eases, and the requests keep the
process: on two cores, sending a webhook for every create as it happens took a third of the
creates a second (BENCHMARKS.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from api import metrics
from api.policy import Caller
from api.poster import Poster, PostFailed
from api.schemas import render_view
from api.webhooks import signature_header
from ledger import __version__
from ledger.handler import Chore, Request
from ledger.log import DELIVERED, GAVE_UP, PENDING, SYSTEM, Delivery, DeliveryAttempt, Envelope
from ledger.webhooks import ACTIVE, DisableWebhook
from projections.webhooks import DEFAULT_PREFIX

if TYPE_CHECKING:
    from api.service import TaskLedger

log = structlog.get_logger("taskledger.webhooks")

#: Seconds before the 2nd, 3rd, ... attempt (the last repeats).
BACKOFF = (5, 30, 120, 600, 1800, 3600, 10800, 21600)
#: Of a receiver's answer: read at most this much, keep the first RESPONSE_KEPT bytes.
RESPONSE_READ = 64 * 1024
RESPONSE_KEPT = 1024
#: The longest the dispatcher waits between two looks for due deliveries.
LOOK_EVERY = 1.0
#: Chores in a row that may fail to record the same attempts before they are let go (their
#: deliveries' leases lapse and they are sent again): one bad record must not make every
#: batch of the writer fail and run again guarded for ever.
GIVE_UP_RECORDING = 5
#: While the API is busy, the share of one core the dispatcher may use (its thread and its
#: chores on the writer's), and the most CPU seconds it may save up or owe.
SHARE = 0.1
BURST = 0.05


def retry_delay(attempts: int, scale: float = 1.0, rand: float | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt, with +-20% jitter."""
    base = BACKOFF[min(attempts, len(BACKOFF)) - 1]
    jitter = 0.8 + 0.4 * (random.random() if rand is None else rand)
    return base * scale * jitter


class Attempted(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt, sent: the delivery and what became of it."""

    delivery: Delivery
    attempt: DeliveryAttempt
    delivered: bool
    retryable: bool
    #: False when nothing was sent (the subscription was deleted or disabled meanwhile, or has
    #: no secret): such an end does not count toward disabling the subscription.
    sent: bool = True


class Dispatcher:
    def __init__(self, service: TaskLedger, *, holder: str | None = None) -> None:
        self.service = service
        settings = service.settings
        self.concurrency = max(1, settings.webhook_concurrency)
        self.timeout = settings.webhook_timeout
        self.lease = timedelta(seconds=3 * settings.webhook_timeout)
        #: Who holds a lease: unique per process and start.
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._thread = threading.Thread(target=self._main, name="taskledger-webhooks", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._done: list[Attempted] = []
        #: Each subscription's state and secrets as read since the last lease (read once per
        #: batch of deliveries, not once per delivery).
        self._known: dict[str, tuple[Any, Any]] = {}
        self._base_url = service.webhook_base_url()
        #: Whether a delivery's reads go to a thread (PostgreSQL: each is a round trip).
        self._offload = service.store.is_postgres
        self._metered = (time.monotonic(), time.thread_time())
        #: Chores in a row that failed (see GIVE_UP_RECORDING).
        self._failed_cycles = 0
        self._budget = BURST
        #: CPU its chores took on the writer's thread (counted in its share too).
        self._chore_cpu = 0.0
        self._seen_outbox = 0

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float | None = None) -> None:
        """Take no more deliveries; wait for those in flight (at most one attempt's timeout)
        and record them."""
        self._stopping = True
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout if timeout is not None else self.timeout + 5)

    def wake(self) -> None:
        """Look for due deliveries now (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def committed(self, results: Sequence[Any]) -> None:
        """The group-commit writer's listener: wake if the batch wrote deliveries."""
        written = self.service.store.outbox.written
        if written != self._seen_outbox:
            self._seen_outbox = written
            self.wake()

    def _main(self) -> None:
        asyncio.run(self._run())

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._metered = (time.monotonic(), time.thread_time() + self._chore_cpu)  # this thread's
        self._ready.set()
        settings = self.service.settings
        client = Poster(
            allow_private=settings.allow_private_webhooks,
            read_limit=RESPONSE_READ,
            user_agent=f"taskledger-webhooks/{__version__}",
        )
        inflight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    places = self._places()
                    free = places - len(inflight)
                    leased = await self._cycle(free)
                    for delivery in leased:
                        task = asyncio.create_task(self._attempt(client, delivery))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    if leased and len(leased) == free:
                        continue  # more may be due: look again once a place is free
                    if not places:  # over budget while the API is busy: sit out, unwoken
                        await asyncio.sleep(self._refill_wait())
                        continue
                    wait = LOOK_EVERY if inflight else await asyncio.to_thread(self._idle_wait)
                except Exception as exc:  # the database: log, and look again shortly
                    log.warning("webhook_dispatch_error", error=str(exc), kind=type(exc).__name__)
                    wait = LOOK_EVERY
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
            if inflight:
                await asyncio.wait(inflight, timeout=self.timeout + 1)
            await self._cycle(0)
        finally:
            await client.close()

    async def _cycle(self, free: int) -> list[Delivery]:
        """Record the attempts that ended and lease up to ``free`` due deliveries, in one
        chore of the group-commit writer: the dispatcher's writes ride the next batch's
        transaction (and its one fsync) instead of paying for transactions of their own."""
        done, self._done = self._done, []
        want = max(free, 0)
        if not done and not want:
            return []
        try:
            chore = Chore(run=functools.partial(self._record_and_lease, done, want))
            leased, disable = await asyncio.wrap_future(self.service.writer.submit_chore(chore))
        except BaseException:
            self._failed_cycles += 1
            if self._failed_cycles < GIVE_UP_RECORDING:
                self._done = done + self._done  # recorded next time
            else:  # the same records keep failing: let them go (their leases lapse: sent again)
                log.error("webhook_attempts_dropped", attempts=len(done))
                self._failed_cycles = 0
            raise
        self._failed_cycles = 0
        if leased:
            self._known.clear()
        for webhook_id, failures in disable:
            await asyncio.to_thread(self._disable, webhook_id, failures)
        return leased

    def _places(self) -> int:
        """Posts this process may start now: all of ``webhook_concurrency``; but while the API
        is busy (the writer's batches hold several commands) none while the dispatcher is over
        its budget: webhooks are background work, and yield the process to the requests.

        The budget is a bucket of CPU time: it fills at SHARE of a second per second (up to
        BURST) and empties by what this thread and its chores on the writer's thread use. So
        under a load that lasts, deliveries go on at SHARE of a core's worth of them, never
        stop; in a burst they fall behind and catch up as it eases."""
        now, cpu = time.monotonic(), time.thread_time() + self._chore_cpu
        last_now, last_cpu = self._metered
        self._metered = (now, cpu)
        self._budget += (now - last_now) * SHARE - (cpu - last_cpu)
        self._budget = max(-BURST, min(BURST, self._budget))
        if self.service.writer.busy and self._budget < 0:
            return 0
        return self.concurrency

    def _refill_wait(self) -> float:
        """Seconds until the budget is above nothing again (at least a hundredth)."""
        return min(LOOK_EVERY, max(0.01, -self._budget / SHARE))

    def _idle_wait(self) -> float:
        """With nothing in flight: seconds until the next delivery is due (a retry's time),
        at most LOOK_EVERY, at least a twentieth of a second."""
        due = self.service.store.webhooks.next_due()
        if due is None:
            return LOOK_EVERY
        wait = (due - self.service.clock()).total_seconds()
        return min(LOOK_EVERY, max(0.05, wait))

    def _record_and_lease(
        self, done: list[Attempted], want: int, tx: Any
    ) -> tuple[list[Delivery], list[tuple[str, int]]]:
        """In the writer's transaction: the attempts that ended, then the deliveries leased;
        returns those and the subscriptions to disable."""
        started = time.thread_time()
        try:
            disable = self._record(tx, done)
            if not want:
                return [], disable
            at = self.service.clock()
            leased = self.service.store.webhooks.lease_deliveries(
                tx, at, self.holder, at + self.lease, want
            )
            return leased, disable
        finally:
            self._chore_cpu += time.thread_time() - started

    def _record(self, tx: Any, done: list[Attempted]) -> list[tuple[str, int]]:
        """The attempts that ended; the subscriptions to disable."""
        settings = self.service.settings
        store = self.service.store
        disable = []
        for item in done:
            d, attempt = item.delivery, item.attempt
            next_at: datetime | None = None
            if item.delivered:
                status = DELIVERED
            elif item.retryable and attempt.attempt < settings.webhook_max_attempts:
                status = PENDING
                delay = retry_delay(attempt.attempt, settings.webhook_backoff_scale)
                next_at = attempt.at + timedelta(seconds=delay)
            else:
                status = GAVE_UP
            written = store.webhooks.finish_attempt(
                tx, d.delivery_id, self.holder, attempt, status=status, next_attempt_at=next_at
            )
            if not written:
                log.warning("webhook_lease_lost", delivery_id=d.delivery_id)
                continue
            metrics.WEBHOOK_DELIVERIES.labels(status).inc()
            if status == PENDING or not item.sent or d.webhook_id.startswith(DEFAULT_PREFIX):
                continue
            run = store.webhooks.count_failure(tx, d.webhook_id, status == GAVE_UP)
            if run >= settings.webhook_disable_after:
                disable.append((d.webhook_id, run))
        return list(dict(disable).items())  # one command per subscription

    def _disable(self, webhook_id: str, failures: int) -> None:
        command = DisableWebhook(
            webhook_id=webhook_id,
            at=self.service.clock(),
            reason=f"{failures} deliveries in a row failed",
        )
        envelope = Envelope(recorded_at=self.service.clock(), actor=SYSTEM)
        future: Future[Any] = self.service.writer.submit(
            Request(command=command, envelope=envelope)
        )
        try:
            outcome = future.result(timeout=30)
        except Exception as exc:
            log.warning("webhook_disable_failed", webhook_id=webhook_id, error=str(exc))
            return
        if outcome.recorded:
            log.warning("webhook_disabled", webhook_id=webhook_id, failures=failures)

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, client: Poster, d: Delivery) -> None:
        number = d.attempts + 1
        at = self.service.clock()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        response: str | None = None
        retryable = sent = True
        try:
            if self._offload:  # a round trip each on PostgreSQL: not on this loop
                prepared = await asyncio.to_thread(self._prepare, d)
            else:  # a few indexed reads on SQLite: cheaper than a hop to another thread
                prepared = self._prepare(d)
            if isinstance(prepared, str):
                error, retryable, sent = prepared, False, False
            else:
                body, found = prepared
                stamp = int(time.time())
                signature = signature_header(
                    found, d.delivery_id, stamp, body, self.service.clock()
                )
                headers = [
                    ("content-type", "application/json"),
                    ("webhook-id", d.delivery_id),
                    ("webhook-timestamp", str(stamp)),
                    ("webhook-signature", signature),
                ]
                async with asyncio.timeout(self.timeout):
                    answer = await client.post(d.url, headers, body)
                status = answer.status
                response = answer.body[:RESPONSE_KEPT].decode("utf-8", "replace")
                if not 200 <= status < 300:
                    error = f"the receiver answered {status}"
                    retryable = status >= 500 or status == 429
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except PostFailed as exc:
            error, retryable = exc.message, exc.retryable
        except Exception as exc:  # building the body: a bug or the database; try again later
            error = f"{type(exc).__name__}: {exc}"
            log.warning("webhook_attempt_error", delivery_id=d.delivery_id, error=error)
        delivered = status is not None and 200 <= status < 300
        attempt = DeliveryAttempt(
            attempt=number,
            at=at,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            status_code=status,
            error=error,
            response=response,
        )
        self._done.append(
            Attempted(
                delivery=d, attempt=attempt, delivered=delivered, retryable=retryable, sent=sent
            )
        )
        if self._wake is not None:
            self._wake.set()

    def _prepare(self, d: Delivery) -> tuple[bytes, Any] | str:
        """The body and the secrets to sign it with, or why this delivery cannot be sent (the
        subscription is gone or disabled, or has no secret: not worth trying again)."""
        known = self._known.get(d.webhook_id)
        if known is None:
            store = self.service.store.webhooks
            subscription = None
            if not d.webhook_id.startswith(DEFAULT_PREFIX):
                subscription = store.load_webhook(d.webhook_id)
            known = self._known[d.webhook_id] = (subscription, store.secrets(d.webhook_id))
        subscription, found = known
        if not d.webhook_id.startswith(DEFAULT_PREFIX):
            if subscription is None or subscription.status != ACTIVE:
                state = "deleted" if subscription is None else subscription.status
                return f"not sent: the subscription is {state}"
        if found is None:
            return "not sent: the subscription has no signing secret (rotate it to make one)"
        return self._body(d), found

    def _body(self, d: Delivery) -> bytes:
        service = self.service
        view = service.delivered_view(d)
        caller = Caller(key_id="webhooks", owner=d.owner, role="user")
        links = service.linker(caller, self._base_url)
        task = render_view(view, links, include_chunks=False)
        return msgspec.json.encode({"type": d.event_type, "timestamp": d.created_at, "data": task})
