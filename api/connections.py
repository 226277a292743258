"""How many connections a server process holds, and for how long one may sit without a request.

uvicorn (0.54, httptools) closes a connection idle *after* a response (``timeout_keep_alive``),
but has no timer on a connection that has not finished its first request head: one that sends
nothing, or half a head, is held for ever. Its ``limit_concurrency`` answers 503 only once a
request head has arrived (so idle connections are never refused, and they count against the
limit), without ``Retry-After``. And when the process runs out of file descriptors, accept()
fails and every new client waits. So ``taskledger serve`` runs :class:`GuardedProtocol`, uvicorn's
httptools protocol with:

- a **header timeout**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of connecting, or of its first byte after a response; the timer is
  not reset by more bytes (a head sent one byte at a time is cut all the same). A connection that
  sent nothing is closed; one that sent part of a head gets 408 first.
- a **keep-alive** timeout: a connection idle after a response is closed after ``keep_alive``
  seconds (uvicorn's own timer, set from the settings).
- a **connection cap** (``max_connections``, per process): at the cap, a new connection takes
  the slot of the connection that has been waiting longest with no request in progress (sent
  nothing since it connected or since its last response: closed; part-way through a head: 503
  with ``Retry-After``). Only when every slot holds a request in progress (an answer being
  computed, an SSE stream, a long-poll claim) is the new connection itself refused: 503 with
  ``Retry-After`` at once, without waiting for its request. So idle clients cannot keep others
  out (an attacker has to open connections faster than the cap's worth in the time a client
  takes to send its request head), and the cap, not the open-file limit, is what refuses.
- a **head size** limit: a request head over :data:`MAX_HEAD_BYTES` gets 431 (httptools has no
  limit of its own).
- a **send stall** limit: output the client reads none of for :data:`SEND_STALL_SECONDS` (a
  response blocked on a client that stopped reading, or a closed connection's unsent end) aborts
  the connection, so no client holds a slot, or a descriptor, by not reading.

A request in progress has no timer here but the send stall: a response being streamed (the SSE
feed) or computed (a claim waiting up to 60 s for work) to a client that reads it is never cut.

:func:`raise_open_file_limit` raises the process's soft RLIMIT_NOFILE to its hard limit, and
:func:`allowed_connections` is the most connections that leaves room for (the database's files,
the log, the loop's own descriptors, refusals still being written).
"""

from __future__ import annotations

import asyncio
import functools
import resource
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.settings import Settings, settings_from_env

log = structlog.get_logger("taskledger.connections")

#: Descriptors kept out of the connection cap: the database, its WAL and shared memory (once per
#: SQLite connection), the write lock, the log, the event loop's own, pipes, and the refusals
#: still being written (:data:`MAX_LINGERING`). A server holds about 30 of them at rest.
RESERVED_FDS = 128
#: The cap when ``--max-connections`` is not given, if the open-file limit allows that many.
DEFAULT_MAX_CONNECTIONS = 4096
#: Largest request head (request line and headers) accepted; bigger gets 431.
MAX_HEAD_BYTES = 64 * 1024
#: Seconds a refused connection is kept open after its answer (its request read and dropped), so
#: that closing it does not reset the connection before the client has read the answer.
LINGER_SECONDS = 1.0
#: Refused connections kept lingering at once; past this, a refusal is closed at once.
MAX_LINGERING = 32
#: What a refusal at the cap tells the client to wait, in seconds.
RETRY_AFTER = 1
#: Seconds the output of a connection may stay blocked (the client reading none of it) before
#: the connection is aborted: a response stuck on a client that stopped reading, or a closed
#: connection still holding unsent bytes, would otherwise keep its descriptor for good.
SEND_STALL_SECONDS = 30.0
#: Seconds between two log lines counting refusals, evictions and timeouts.
LOG_EVERY = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float
    keep_alive: float

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        cap = settings.max_connections
        if cap is None:
            cap = default_max_connections(open_file_limit())
        return cls(cap, settings.header_timeout, settings.keep_alive)


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (children inherit it); the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; allowed_connections() is computed from what is in force
    return open_file_limit()


def allowed_connections(file_limit: int) -> int:
    """The most connections a process with ``file_limit`` descriptors can hold and still open
    its database files and write its refusals."""
    return max(file_limit - RESERVED_FDS, file_limit // 4, 1)


def default_max_connections(file_limit: int) -> int:
    return min(DEFAULT_MAX_CONNECTIONS, allowed_connections(file_limit))


@functools.cache
def _limits_from_env() -> ConnectionLimits:
    return ConnectionLimits.of(settings_from_env())


def _response(status: bytes, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 " + status]
    lines += [name + b": " + value for name, value in headers]
    lines += [
        b"content-type: text/plain; charset=utf-8",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


TOO_MANY = b"Too many connections; retry later"
TIMED_OUT = b"The request head did not arrive in time"
TOO_LARGE = b"The request head is too large"


@dataclass(eq=False)
class _Guard:
    """One server's (one process's) connections: how many hold a slot, and those with no request
    in progress, oldest first, that a new connection may take the slot of."""

    admitted: int = 0
    #: Connections with no request in progress (nothing since connecting or since their last
    #: response, or part of a request head), in the order they started waiting.
    waiting: dict[GuardedProtocol, None] = field(default_factory=dict)
    lingering: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    log_due: float = 0.0
    log_pending: bool = False

    def forget(self, conn: GuardedProtocol) -> None:
        self.waiting.pop(conn, None)

    def oldest_waiting(self) -> GuardedProtocol | None:
        if not self.waiting:
            return None
        conn = next(iter(self.waiting))
        del self.waiting[conn]
        return conn

    def count(self, what: str, loop: asyncio.AbstractEventLoop) -> None:
        """Count a refusal, eviction or timeout; logged at most every :data:`LOG_EVERY`
        seconds, so a flood of connections is not a flood of log lines."""
        self.counts[what] = self.counts.get(what, 0) + 1
        if self.log_pending:
            return
        now = time.monotonic()
        if now >= self.log_due:
            self.flush()
        else:
            self.log_pending = True
            loop.call_later(self.log_due - now, self.flush)

    def flush(self) -> None:
        self.log_pending = False
        if self.counts:
            # Refusals mean the cap was full of requests in progress; the rest is housekeeping
            # (evictions and timeouts of connections that sent no request in time).
            level = log.warning if "refused" in self.counts else log.info
            level("connections_closed", admitted=self.admitted, **self.counts)
            self.counts = {}
            self.log_due = time.monotonic() + LOG_EVERY


_guards: weakref.WeakKeyDictionary[ServerState, _Guard] = weakref.WeakKeyDictionary()


def _guard_of(server_state: ServerState) -> _Guard:
    guard = _guards.get(server_state)
    if guard is None:
        guard = _guards[server_state] = _Guard()
    return guard


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timeout, the connection cap and the head size
    limit described in this module's docstring. Its limits come from :attr:`limits` (set by
    :func:`protocol_for`), or else from the settings ``taskledger serve --workers N`` puts in
    the environment of each worker process."""

    limits: ClassVar[ConnectionLimits | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn_limits = type(self).limits or _limits_from_env()
        self.timeout_keep_alive = self.conn_limits.keep_alive  # type: ignore[assignment]
        self.limit_concurrency = None  # the cap is enforced at connection_made, below
        # The API has no WebSocket route: an Upgrade request is answered as plain HTTP. (Handed
        # to uvicorn's WebSocket protocol, the connection would leave this one, and its slot
        # with it, for good.)
        self.ws_protocol_class = None
        self.guard = _guard_of(server_state)
        self.head_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.stall_timer: asyncio.TimerHandle | None = None
        self.unsent = 0
        self.in_head = False
        self.head_bytes = 0
        #: admitted: holds a slot; closing: answered (or evicted), its input dropped.
        self.holds_slot = False
        self.closing = False

    # -- the connection's life ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        while guard.admitted >= self.conn_limits.max_connections:
            victim = guard.oldest_waiting()
            if victim is None:
                # Every slot holds a request in progress: refuse this one, now.
                self.transport = transport
                guard.count("refused", self.loop)
                self._answer_and_close(b"503 Service Unavailable", TOO_MANY, retry_after=True)
                return
            victim._evict()  # frees its slot, unless it still has output to deliver
        guard.admitted += 1
        self.holds_slot = True
        super().connection_made(transport)
        guard.waiting[self] = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
            self.guard.lingering -= 1
        self.guard.forget(self)
        self._release_slot()
        if self.flow is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # answered and closing: the rest of the request is read and dropped
        super().data_received(data)
        if self.closing or self.transport.is_closing() or self._busy():
            return
        # No request in progress and bytes came in: a request head (or the rest of an earlier
        # request's body, after an early answer) has to be complete within the header timeout.
        self._arm_head_timer()
        if self.in_head:
            # Every byte of a read that leaves a head incomplete counts (with a pipelined
            # request, that can include the end of the one before).
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.guard.count("head_too_large", self.loop)
                self._answer_and_close(b"431 Request Header Fields Too Large", TOO_LARGE)

    def _unsupported_upgrade_warning(self) -> None:
        pass  # a client asking for a WebSocket is no warning to the operator

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_output()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stall_timer is not None and not self.transport.is_closing():
            self.stall_timer.cancel()
            self.stall_timer = None

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._watch_output()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._cancel_head_timer()
        self.guard.forget(self)  # a request is in progress: no timer, never evicted
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.closing or self.transport.is_closing() or self._busy():
            return
        # Waiting for the next request (uvicorn's keep-alive timer is running): the newest
        # candidate to make way for a new connection.
        self.guard.forget(self)
        self.guard.waiting[self] = None

    # -- helpers ------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(
                self.conn_limits.header_timeout, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.closing or self.transport.is_closing() or self._busy():
            return
        self.guard.count("header_timeout", self.loop)
        if self.in_head:
            self._answer_and_close(b"408 Request Timeout", TIMED_OUT)
        else:
            self._drop()

    def _evict(self) -> None:
        """Give this waiting connection's slot to a new one."""
        self.guard.count("evicted", self.loop)
        if self.transport.is_closing():
            self.closing = True  # already closing (keep-alive), maybe still sending
        elif self.in_head:
            self._answer_and_close(b"503 Service Unavailable", TOO_MANY, retry_after=True)
        else:
            self._drop()

    def _drop(self) -> None:
        """Close a connection with no request in progress and nothing to answer. Its slot is
        free at once, unless the end of its last response is still being sent: then it is held
        until the connection is gone (the descriptor is)."""
        self.closing = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self.guard.forget(self)
        self.transport.close()
        if self.transport.get_write_buffer_size() == 0:
            self._release_slot()
        else:
            self._watch_output()

    def _watch_output(self) -> None:
        """Abort the connection if its unsent output does not shrink for
        :data:`SEND_STALL_SECONDS`."""
        if self.stall_timer is None and self.transport.get_write_buffer_size():
            self.unsent = self.transport.get_write_buffer_size()
            self.stall_timer = self.loop.call_later(SEND_STALL_SECONDS, self._output_check)

    def _output_check(self) -> None:
        self.stall_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent == 0:
            return
        if unsent < self.unsent:  # slow, but moving
            self._watch_output()
            return
        self.guard.count("send_stalled", self.loop)
        self.transport.abort()

    def _release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.guard.admitted -= 1

    def _answer_and_close(self, status: bytes, body: bytes, *, retry_after: bool = False) -> None:
        """Answer ``status`` and close: the answer is sent and our side shut, then whatever the
        client still sends is read and dropped until it hangs up or :data:`LINGER_SECONDS` pass
        (closing at once, with its request unread, would reset the connection and could destroy
        the answer before the client reads it)."""
        self.closing = True
        self._cancel_head_timer()
        if self.flow is not None:
            self._unset_keepalive_if_required()
        self.guard.forget(self)
        self._release_slot()
        transport = self.transport
        headers = list(self.server_state.default_headers)
        if retry_after:
            headers.append((b"retry-after", str(RETRY_AFTER).encode()))
        transport.write(_response(status, body, headers))
        if self.guard.lingering >= MAX_LINGERING or not transport.can_write_eof():
            if transport.get_write_buffer_size():
                transport.abort()  # a flood of refusals: no waiting on a client not reading
            else:
                transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self.guard.lingering += 1
        self.linger_timer = self.loop.call_later(LINGER_SECONDS, self._linger_over)

    def _linger_over(self) -> None:
        self.linger_timer = None
        self.guard.lingering -= 1
        self.transport.abort()


def protocol_for(settings: Settings) -> type[GuardedProtocol]:
    """The protocol class for a server in this process with ``settings``' limits."""
    return type("TaskledgerProtocol", (GuardedProtocol,), {"limits": ConnectionLimits.of(settings)})


#: What ``taskledger serve --workers N`` names as the protocol: each worker process reads the
#: limits from the settings in its environment.
PROTOCOL_FROM_ENV = "api.connections:GuardedProtocol"
