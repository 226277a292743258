"""PostgreSQL connections and the schema: the events and blobs tables, the append-only
triggers, the read models', records' and webhooks' tables, the schema version, and the mapping
of driver errors to StorageUnavailable.

Every table lives in the connection's current schema (``search_path``), so one database can
hold several ledgers side by side (``?options=-csearch_path%3Dname`` in the URL); the advisory
lock that orders appends and the NOTIFY channel are named after that schema too.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ledger.errors import SchemaTooNew, StorageUnavailable

#: The schema this code writes and reads. A database whose ``schema_version`` is higher was
#: written by a newer taskledger and is refused (SchemaTooNew); a lower one is migrated (SCHEMA
#: is run again: every statement in it may run on a database that has some of it already).
#:
#: 1. The log, blobs, read models and records.
#: 2. Webhooks: ``webhooks``, ``webhook_secrets``, ``webhook_deliveries``, ``webhook_attempts``
#:    and ``webhook_health`` (``ledger.postgres.webhooks``).
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position BIGINT PRIMARY KEY,
    stream_id TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    type TEXT COLLATE "C" NOT NULL,
    data TEXT COLLATE "C" NOT NULL,
    recorded_at TEXT COLLATE "C" NOT NULL,
    actor_key_id TEXT COLLATE "C",
    actor_role TEXT COLLATE "C" NOT NULL,
    request_id TEXT COLLATE "C",
    idempotency_key TEXT COLLATE "C",
    hash TEXT COLLATE "C" NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS events_type ON events (type, position);
CREATE OR REPLACE FUNCTION taskledger_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
DROP TRIGGER IF EXISTS events_no_update ON events;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION taskledger_events_append_only();
DROP TRIGGER IF EXISTS events_no_truncate ON events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION taskledger_events_append_only();
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL
);
-- Stored out of line and uncompressed, so a piece of a blob is read without the rest of it.
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS blob_refs (
    task_id TEXT COLLATE "C" NOT NULL,
    sha256 TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (task_id, sha256)
);
CREATE INDEX IF NOT EXISTS blob_refs_sha ON blob_refs (sha256);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT COLLATE "C" PRIMARY KEY,
    owner TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    visible_until TEXT COLLATE "C",
    lease_until TEXT COLLATE "C",
    gone TEXT COLLATE "C",
    version INTEGER NOT NULL,
    state TEXT COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_owner_created ON tasks (owner, created_at, task_id)
    WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at, task_id) WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (lease_until)
    WHERE gone IS NULL AND lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_visible_until ON tasks (visible_until)
    WHERE gone IS NULL AND visible_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue (
    task_id TEXT COLLATE "C" PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_fifo ON queue (position);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status) WHERE gone IS NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    task_id TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (task_id, version)
);
CREATE TABLE IF NOT EXISTS feed (
    owner TEXT COLLATE "C" NOT NULL,
    position BIGINT NOT NULL,
    task_id TEXT COLLATE "C" NOT NULL,
    type TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, position)
);
CREATE INDEX IF NOT EXISTS feed_task ON feed (task_id);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT COLLATE "C" PRIMARY KEY,
    owner TEXT COLLATE "C" NOT NULL,
    role TEXT COLLATE "C" NOT NULL,
    key_hash TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    revoked_at TEXT COLLATE "C"
);
CREATE TABLE IF NOT EXISTS idempotency_outcomes (
    key_id TEXT COLLATE "C" NOT NULL,
    idempotency_key TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT COLLATE "C" NOT NULL,
    outcome BYTEA NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS url_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id TEXT COLLATE "C" PRIMARY KEY,
    owner TEXT COLLATE "C",
    status TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_owner ON webhooks (owner, created_at)
    WHERE status = 'active';
CREATE TABLE IF NOT EXISTS webhook_secrets (
    webhook_id TEXT COLLATE "C" PRIMARY KEY,
    secret TEXT COLLATE "C" NOT NULL,
    previous TEXT COLLATE "C",
    previous_until TEXT COLLATE "C"
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id TEXT COLLATE "C" PRIMARY KEY,
    webhook_id TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    task_id TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    position BIGINT NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    url TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT COLLATE "C",
    lease_holder TEXT COLLATE "C",
    lease_until TEXT COLLATE "C",
    last_status INTEGER,
    last_error TEXT COLLATE "C",
    finished_at TEXT COLLATE "C"
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_task
    ON webhook_deliveries (webhook_id, task_id, position) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON webhook_deliveries (webhook_id, position);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT COLLATE "C" NOT NULL,
    attempt INTEGER NOT NULL,
    at TEXT COLLATE "C" NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    error TEXT COLLATE "C",
    response TEXT COLLATE "C",
    PRIMARY KEY (delivery_id, attempt)
);
CREATE TABLE IF NOT EXISTS webhook_health (
    webhook_id TEXT COLLATE "C" PRIMARY KEY,
    consecutive_failures INTEGER NOT NULL
);
"""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


#: How long a lock (above all the ledger's advisory lock) is waited for before giving up
#: with StorageUnavailable, as SQLite's busy timeout does.
LOCK_TIMEOUT_MS = 10_000


def with_options(url: str, options: str) -> str:
    """``url`` as a conninfo string with ``options`` added to any it has (its search_path)."""
    params = conninfo_to_dict(url)
    params["options"] = f"{params.get('options') or ''} {options}".strip()
    return make_conninfo(**params)  # type: ignore[arg-type]


def connect(url: str, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> psycopg.Connection:
    """A new autocommit connection (transactions are begun explicitly), with
    ``synchronous_commit`` on whatever the server's default (a commit returns once it is
    flushed: what an acknowledged write rests on) and the lock timeout."""
    try:
        conninfo = with_options(
            url, f"-c lock_timeout={int(lock_timeout_ms)} -c synchronous_commit=on"
        )
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StorageUnavailable(f"Cannot connect to PostgreSQL at {redact(url)} ({exc})") from exc


def storage_error(exc: psycopg.Error) -> Exception:
    """Map a driver error to StorageUnavailable when it is about reaching or writing the
    database (a lost connection, a server shutting down, a full disk), else return it."""
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.DiskFull):
        return StorageUnavailable(f"The database cannot be written right now ({exc})")
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return StorageUnavailable(
            f"The database cannot be written right now (another node has held its write lock "
            f"too long: {exc})"
        )
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return StorageUnavailable(f"The database cannot be written right now ({exc})")
    return exc


def lock_key(schema: str, purpose: str) -> int:
    """A 64-bit advisory lock key for ``purpose`` in ``schema`` (stable across processes)."""
    digest = hashlib.sha256(f"taskledger:{schema}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def channel_name(schema: str) -> str:
    """The NOTIFY channel the appends to the ledger in ``schema`` are announced on."""
    return "taskledger_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


def create_schema(conn: psycopg.Connection) -> str:
    """Create the tables if they are missing and check the schema version, under an advisory
    lock (several nodes starting at once would otherwise race on CREATE). Returns the current
    schema's name. SchemaTooNew if the database is ahead of this code."""
    (schema,) = conn.execute("SELECT current_schema()").fetchone() or (None,)
    if schema is None:
        raise StorageUnavailable(
            "PostgreSQL has no current schema to create the ledger's tables in (check the "
            "search_path in the URL, and that the schema exists)"
        )
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "schema"),))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"The database's schema is version {row[0]}, newer than this taskledger's "
                f"({SCHEMA_VERSION}): it was written by a newer release. Upgrade taskledger "
                "to use it."
            )
        if row is None or row[0] < SCHEMA_VERSION:
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )
    return str(schema)
