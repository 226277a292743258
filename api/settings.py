"""Service settings. Tests build them explicitly; ``taskledger serve`` builds them from flags."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

DEFAULT_DB = "taskledger.db"


def default_db_path() -> Path | str:
    """``$TASKLEDGER_DB`` (a file, or a ``postgresql://`` URL), else ./taskledger.db."""
    value = os.environ.get("TASKLEDGER_DB") or DEFAULT_DB
    return value if is_database_url(value) else Path(value)


def is_database_url(value: object) -> bool:
    """Whether ``value`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)
    rather than a SQLite file."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


class Settings(msgspec.Struct, kw_only=True):
    #: The SQLite file (unused when ``db_url`` is set).
    db_path: Path
    #: A ``postgresql://`` URL: the ledger lives in that PostgreSQL database (several server
    #: processes on several hosts may share it) instead of ``db_path``.
    db_url: str | None = None
    #: Base of absolute URLs (task_url, input_file_url, pdf_url). None: from each request's
    #: Host, when it is one of ``allowed_hosts``.
    public_url: str | None = None
    #: The hosts (``host`` for any port, or ``host:port``) a request's Host may name for the
    #: links in its answer when ``public_url`` is not set; any other Host (a forged one) gets
    #: links to the first. ``taskledger serve`` defaults to its bind address (see
    #: api.links.default_allowed_hosts).
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    #: Lifetime (seconds) of the signed file links (input_file_url, pdf_url); see api.links.
    url_ttl: int = 3600
    #: Request bodies over this many bytes get 413.
    max_body_bytes: int = 32 * 1024 * 1024
    #: The worker routes' body limit: a complete carries the task's whole output, which may be
    #: several times its input (the reference worker fails a task whose output is bigger).
    max_output_bytes: int = 64 * 1024 * 1024
    #: A create's file given as an http(s) URL is downloaded within this many seconds in all
    #: (connecting, redirects and the body), and no bigger than ``max_body_bytes``.
    fetch_timeout: float = 30.0
    #: Download from loopback, private, link-local and other non-public addresses too (off:
    #: such URLs are refused, so a caller cannot make the server reach its own network).
    allow_private_fetch: bool = False
    #: The most output bytes (as stored) one list with ``include_chunks`` answers; a list whose
    #: outputs add up to more is refused (400) with the ``limit`` that fits. A single task's
    #: output always fits. See api.service.TaskLedger.list_as.
    max_list_output_bytes: int = 64 * 1024 * 1024
    #: How many creates with a large body (api.tasks.LARGE_CREATE or more, or of no stated
    #: size) one process takes at once; one more is 503 with Retry-After. 0: no cap.
    max_large_creates: int = 4
    #: SQLite durability: FULL (default) fsyncs every commit; NORMAL may lose the last commits on
    #: power loss (never on a process crash).
    synchronous: str = "FULL"
    #: Default ``expires_in`` (seconds) for tasks created without one; None means never.
    default_expires_in: int | None = None
    #: Lease a claim gets when the worker does not ask for one, and the longest it may ask for.
    lease_seconds: int = 300
    max_lease_seconds: int = 3600
    #: Claims a task gets before a lease expiry times it out.
    max_attempts: int = 3
    #: How often the sweepers look for expired leases and expired tasks (seconds); 0 disables.
    sweep_interval: float = 1.0
    #: Longest long poll a worker may ask for on claim.
    max_wait_seconds: int = 60
    #: Event streams (GET /api/v1/events/stream) one key may hold open at once in one server
    #: process; the next is 429 until one closes.
    max_streams_per_key: int = 8
    #: Per-key rate limit in requests per second (token bucket); None disables it.
    rate_limit_per_second: float | None = None
    rate_limit_burst: int = 20
    #: How long (ms) the group-commit writer may park this process's event loop while a batch's
    #: commands run (it runs again before COMMIT); 0 never parks. See api.groupcommit.Pause.
    park_ms: float = 50.0
    #: Which inputs create takes: ``any`` file, or only ``chunkr``'s types (by their first bytes;
    #: others are 400 "Unsupported file type"). See api.filetypes.
    file_types: str = "any"
    #: The most events one task's stream may hold: past it an update is refused (429, nothing
    #: appended); cancel, delete and the workers' and sweepers' commands still run.
    max_events_per_task: int = 10_000
    #: Origins a browser may call the API from (CORS; ``*``: any, as Chunkr); empty: no CORS
    #: headers at all. A preflight needs no key.
    cors_origins: tuple[str, ...] = ("*",)
    #: Whether GET /metrics answers without a key (else it needs an admin key).
    metrics_public: bool = False
    # -- connections (api.connections; taskledger serve hands them to uvicorn) ------------------
    #: Connections one server process holds at once. At the cap a new connection takes the slot
    #: of the longest-idle one (no request in progress), or gets 503 with Retry-After when every
    #: slot holds a request in progress. None: what the open-file limit leaves room for, at most
    #: 4096 (api.connections.default_max_connections).
    max_connections: int | None = None
    #: Seconds a connection has to deliver a whole request head, from connecting or from its first
    #: byte after a response; then it is closed (408 first if part of a head came).
    header_timeout: float = 10.0
    #: Seconds a connection idle after a response stays open (keep-alive).
    keep_alive: float = 5.0
    # -- webhooks (api.webhooks, api.dispatch) -------------------------------------------------
    #: Post to loopback, private and link-local addresses too (off: such webhook URLs are
    #: refused when subscribed and again when sent).
    allow_private_webhooks: bool = False
    #: Attempts a delivery gets before it is marked failed.
    webhook_max_attempts: int = 8
    #: Consecutive failed deliveries after which a subscription is disabled.
    webhook_disable_after: int = 20
    #: Seconds one attempt may take (connecting, sending, the answer); a lease on a delivery
    #: lasts three times this.
    webhook_timeout: float = 10.0
    #: Multiplies the retry delays (about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, then 6 h):
    #: below 1 for tests and staging.
    webhook_backoff_scale: float = 1.0
    #: Deliveries one process sends at once.
    webhook_concurrency: int = 16


def settings_for(db: Path | str, **fields: object) -> Settings:
    """Settings over ``db``: a SQLite file's path, or a PostgreSQL URL."""
    if is_database_url(db):
        return Settings(db_path=Path(DEFAULT_DB), db_url=str(db), **fields)  # type: ignore[arg-type]
    return Settings(db_path=Path(db), **fields)  # type: ignore[arg-type]


def database_of(settings: Settings) -> Path | str:
    """The database ``settings`` name: the PostgreSQL URL if there is one, else the file."""
    return settings.db_url if settings.db_url is not None else settings.db_path


SETTINGS_ENV = "TASKLEDGER_SETTINGS"


def settings_to_env(settings: Settings) -> str:
    return msgspec.json.encode(settings, enc_hook=str).decode()


def settings_from_env() -> Settings:
    """The settings ``taskledger serve --workers N`` hands to each worker process."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set")
    return msgspec.json.decode(
        raw, type=Settings, dec_hook=lambda type_, value: Path(value) if type_ is Path else value
    )
