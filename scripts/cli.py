"""The ``taskledger`` command line (click): serve, keys, and the operator tools."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import msgspec

from api import keys as key_store
from api.composition import Store, database_name
from api.filetypes import FILE_TYPE_POLICIES
from api.links import binds_every_interface, default_allowed_hosts, parse_host
from api.policy import ROLES
from api.settings import is_database_url, settings_for
from ledger.errors import LedgerError, SchemaTooNew
from ledger.log import Delivery
from scripts import bench, ops
from scripts.options import Database, db_option, resolve_db


def open_store(db: Database) -> Store:
    """The database (created with its schema if new), for key management."""
    try:
        return Store(db)
    except SchemaTooNew as exc:
        raise click.ClickException(exc.message) from None
    except (OSError, LedgerError) as exc:
        raise click.ClickException(
            f"Cannot open the database {database_name(db)} for writing: {exc}. "
            + (
                "Check the URL, that the server is up and that the user may create tables."
                if is_database_url(db)
                else "Check the path, its permissions and the free space."
            )
        ) from None


def admin_key_file(db: Database) -> Path:
    """Where ``serve`` leaves the first admin key when no terminal is there to show it: next
    to a SQLite file; for a PostgreSQL database, ``<database name>.admin-key`` in the current
    directory."""
    if isinstance(db, str):
        name = urlsplit(db).path.strip("/") or "taskledger"
        return Path(f"{name}.admin-key")
    return db.with_name(db.name + ".admin-key")


def announce_admin_key(db: Database, key_id: str, key: str) -> None:
    """Give the first admin key to the person starting the server, and to nothing else: on the
    terminal (stderr) when there is one; otherwise in a file only its owner can read (0600),
    named on stderr, so it never lands in a log that captures stdout or stderr."""
    if sys.stderr.isatty():
        click.echo(
            f"No API keys yet: created an admin key (id {key_id}). It is shown only once:\n{key}",
            err=True,
        )
        return
    path = admin_key_file(db)
    # A file left from before (or a link planted there) is replaced, never written through: the
    # new file is made here, 0600 whatever the umask.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w") as out:
        out.write(key + "\n")
    click.echo(
        f"No API keys yet: created an admin key (id {key_id}). It is in {path} (readable only by "
        "you); read it, keep it somewhere safe and delete the file.",
        err=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskledger")
def cli() -> None:
    """taskledger: an event-sourced task ledger with a Chunkr-compatible task API."""


@cli.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--public-url",
    default=None,
    help="Base of the absolute URLs in answers: task_url, input_file_url, pdf_url (default: "
    "from each request's Host, when --allowed-hosts lists it).",
)
@click.option(
    "--allowed-hosts",
    default=None,
    callback=lambda ctx, param, value: _allowed_hosts(value),
    help="Comma-separated host or host:port list a request's Host may name links with (no "
    "--public-url); any other Host gets links to the first (default: the --host and --port "
    "address, with localhost and 127.0.0.1 when that is loopback).",
)
@click.option(
    "--url-ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(min=1),
    help="Lifetime in seconds of the signed input_file_url and pdf_url links.",
)
@click.option(
    "--max-body-mb",
    default=32,
    show_default=True,
    type=int,
    help="Largest request body, in MiB (bigger gets 413).",
)
@click.option(
    "--max-output-mb",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest output a worker may complete a task with, in MiB (the worker routes' body "
    "limit).",
)
@click.option(
    "--max-list-output-mb",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most output (MiB, as stored) one list with include_chunks answers; past it the list "
    "is 400, naming the limit that fits.",
)
@click.option(
    "--max-large-creates",
    default=4,
    show_default=True,
    type=click.IntRange(min=0),
    help="Creates with a body of 1 MiB or more taken at once by each process (each holds about "
    "twice its body at its peak); one more gets 503 with Retry-After. 0: no cap.",
)
@click.option(
    "--synchronous",
    default="FULL",
    show_default=True,
    type=click.Choice(["FULL", "NORMAL"], case_sensitive=False),
    help=(
        "SQLite durability: FULL fsyncs every commit (PostgreSQL commits with its own "
        "synchronous_commit, on by default)."
    ),
)
@click.option(
    "--expires-in",
    "default_expires_in",
    default=None,
    type=int,
    help="Default expires_in (seconds) for tasks created without one.",
)
@click.option(
    "--lease-seconds",
    default=300,
    show_default=True,
    type=int,
    help="Lease a claim gets by default.",
)
@click.option(
    "--max-attempts",
    default=3,
    show_default=True,
    type=int,
    help="Claims before a task whose lease keeps expiring is timed out.",
)
@click.option(
    "--sweep-interval",
    default=1.0,
    show_default=True,
    type=float,
    help="Seconds between sweeps for expired leases and tasks (0 turns them off).",
)
@click.option(
    "--rate-limit",
    default=None,
    type=float,
    help="Requests per second allowed per key, per server process (off by default).",
)
@click.option(
    "--rate-limit-burst",
    default=20,
    show_default=True,
    type=int,
    help="Requests a key may make at once before --rate-limit applies.",
)
@click.option(
    "--max-streams-per-key",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Event streams one key may hold open at once, per server process (429 past it).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="Server processes sharing the database (each with its own group-commit writer).",
)
@click.option(
    "--fetch-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a create may take to download a file given by URL (all of it: connecting, "
    "redirects, the body).",
)
@click.option(
    "--allow-private-fetch",
    is_flag=True,
    help="Let creates download from loopback, private and link-local addresses (refused by "
    "default: a caller could reach the server's own network).",
)
@click.option(
    "--park-ms",
    default=50.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Longest the writer parks the event loop while a batch's commands run (0: never).",
)
@click.option(
    "--max-events-per-task",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Events one task may hold: past it an update is refused with 429 (create a new task).",
)
@click.option(
    "--file-types",
    default="any",
    show_default=True,
    type=click.Choice(FILE_TYPE_POLICIES),
    help="Inputs create takes: any file, or only Chunkr's types (PDF, Office, JPEG, PNG; "
    "judged by their first bytes).",
)
@click.option(
    "--cors-origins",
    default="*",
    show_default=True,
    help="Comma-separated origins browsers may call the API from ('*': any; '': no CORS).",
)
@click.option(
    "--log-json/--log-console",
    default=None,
    help="Log format (default: console on a terminal, JSON otherwise).",
)
# -- webhooks (api.dispatch) -----------------------------------------------------------------------
@click.option(
    "--allow-private-webhooks",
    is_flag=True,
    help="Let webhooks go to loopback, private and link-local addresses (refused by default, "
    "when subscribed and again when sent).",
)
@click.option(
    "--webhook-max-attempts",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Attempts a webhook delivery gets before it is marked failed.",
)
@click.option(
    "--webhook-disable-after",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Consecutive failed deliveries after which a subscription is disabled.",
)
@click.option(
    "--webhook-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds one webhook attempt may take (a delivery's lease lasts three times this).",
)
@click.option(
    "--webhook-backoff-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Multiplies the retry delays (5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, then 6 h); "
    "below 1 for tests and staging.",
)
@click.option(
    "--webhook-concurrency",
    default=16,
    show_default=True,
    type=click.IntRange(min=0),
    help="Webhook deliveries each server process sends at once (0: this process sends none).",
)
@click.option(
    "--metrics-public",
    is_flag=True,
    help="Let GET /metrics answer without a key (it needs an admin key by default).",
)
# -- connections (api.connections) ---------------------------------------------------------------
@click.option(
    "--max-connections",
    default=None,
    type=click.IntRange(min=1),
    help="Connections each server process holds at once; at the cap the longest-idle one makes "
    "way, or 503 with Retry-After when every one has a request in progress (default: what the "
    "open-file limit leaves room for, at most 4096).",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a connection has to send a whole request head; then it is closed.",
)
@click.option(
    "--keep-alive",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a connection idle after a response stays open.",
)
def serve(
    db_path: Database | None,
    host: str,
    port: int,
    public_url: str | None,
    allowed_hosts: tuple[str, ...] | None,
    url_ttl: int,
    max_body_mb: int,
    max_output_mb: int,
    max_list_output_mb: int,
    max_large_creates: int,
    synchronous: str,
    default_expires_in: int | None,
    lease_seconds: int,
    max_attempts: int,
    sweep_interval: float,
    rate_limit: float | None,
    rate_limit_burst: int,
    max_streams_per_key: int,
    workers: int,
    fetch_timeout: float,
    allow_private_fetch: bool,
    park_ms: float,
    max_events_per_task: int,
    file_types: str,
    cors_origins: str,
    log_json: bool | None,
    allow_private_webhooks: bool,
    webhook_max_attempts: int,
    webhook_disable_after: int,
    webhook_timeout: float,
    webhook_backoff_scale: float,
    webhook_concurrency: int,
    metrics_public: bool,
    max_connections: int | None,
    header_timeout: float,
    keep_alive: float,
) -> None:
    """Run the HTTP API.

    On a database with no keys yet it creates an admin key and prints it once.

    Example:

        taskledger serve --db ./taskledger.db --port 8000
    """
    import uvicorn

    from api import connections
    from api.app import create_app
    from api.requestlog import configure_logging

    max_connections = _connection_cap(max_connections)
    db = resolve_db(db_path)
    store = open_store(db)
    try:
        made = None
        # In a write transaction, so that of several servers starting at once on one new
        # database only one makes the admin key (the others wait for its commit, then see it).
        with store.log.transaction():
            if store.records.count_keys() == 0:
                made = key_store.create_key(store.records, "admin", "admin")
        if made is not None:
            announce_admin_key(db, made[0].key_id, made[1])
    except LedgerError as exc:
        raise click.ClickException(
            f"Cannot open the database {database_name(db)} for writing: {exc}. Check the path "
            "or URL, the permissions and the free space."
        ) from None
    finally:
        store.close()
    configure_logging(json=log_json)
    if allowed_hosts is None:
        allowed_hosts = default_allowed_hosts(host, port)
        if public_url is None and binds_every_interface(host):
            click.echo(
                f"Listening on every interface with neither --public-url nor --allowed-hosts: "
                f"links in answers name {allowed_hosts[0]} unless the request's Host is one of "
                f"{', '.join(allowed_hosts)}.",
                err=True,
            )
    settings = settings_for(
        db,
        public_url=public_url,
        allowed_hosts=allowed_hosts,
        url_ttl=url_ttl,
        max_body_bytes=max_body_mb * 1024 * 1024,
        max_output_bytes=max_output_mb * 1024 * 1024,
        max_list_output_bytes=max_list_output_mb * 1024 * 1024,
        max_large_creates=max_large_creates,
        synchronous=synchronous.upper(),
        default_expires_in=default_expires_in,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        sweep_interval=sweep_interval,
        rate_limit_per_second=rate_limit,
        rate_limit_burst=rate_limit_burst,
        fetch_timeout=fetch_timeout,
        allow_private_fetch=allow_private_fetch,
        max_streams_per_key=max_streams_per_key,
        park_ms=park_ms,
        max_events_per_task=max_events_per_task,
        file_types=file_types,
        cors_origins=tuple(o.strip() for o in cors_origins.split(",") if o.strip()),
        max_connections=max_connections,
        header_timeout=header_timeout,
        keep_alive=keep_alive,
        allow_private_webhooks=allow_private_webhooks,
        webhook_max_attempts=webhook_max_attempts,
        webhook_disable_after=webhook_disable_after,
        webhook_timeout=webhook_timeout,
        webhook_backoff_scale=webhook_backoff_scale,
        webhook_concurrency=webhook_concurrency,
        metrics_public=metrics_public,
    )
    click.echo(f"taskledger serving {database_name(db)} on http://{host}:{port}", err=True)
    if workers > 1:
        import os

        from api.settings import SETTINGS_ENV, settings_to_env

        os.environ[SETTINGS_ENV] = settings_to_env(settings)
        if log_json is not None:
            os.environ["TASKLEDGER_LOG_JSON"] = "1" if log_json else "0"
        with _metrics_directory():
            uvicorn.run(
                "api.app:create_app_from_env",
                http=connections.PROTOCOL_FROM_ENV,
                factory=True,
                workers=workers,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
            )
        return
    uvicorn.run(
        create_app(settings),
        http=connections.protocol_for(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """prometheus_client's multi-process mode for the worker processes (they start after this
    and read it from their environment): each keeps its metrics in files of a private
    directory, and GET /metrics in any of them adds up all of them. Removed when the server
    stops. A directory the operator set (PROMETHEUS_MULTIPROC_DIR) is used as it is, and kept."""
    import shutil
    import tempfile

    from api.metrics import MULTIPROC_ENV

    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="taskledger-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _connection_cap(requested: int | None) -> int:
    """Raise the open-file limit to its hard limit (worker processes inherit it), and the
    connection cap under it, so that the cap, not the operating system, is what refuses."""
    from api import connections

    file_limit = connections.raise_open_file_limit()
    allowed = connections.allowed_connections(file_limit)
    if requested is None:
        return connections.default_max_connections(file_limit)
    if requested > allowed:
        raise click.BadParameter(
            f"{requested} is more than the open-file limit ({file_limit}) leaves room for: at "
            f"most {allowed} here. Raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or "
            "ask for fewer.",
            param_hint="--max-connections",
        )
    return requested


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys; rotate the secret that signs file links."""


def _allowed_hosts(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
    if not entries:
        raise click.BadParameter(
            "give at least one host or host:port", param_hint="--allowed-hosts"
        )
    for entry in entries:
        if parse_host(entry) is None:
            raise click.BadParameter(
                f"{entry!r} is not a host or host:port (IPv6 in brackets: [::1]:8000)",
                param_hint="--allowed-hosts",
            )
    return entries


@keys.command("create")
@db_option
@click.option("--owner", required=True, help="Whose tasks the key acts on.")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="user",
    show_default=True,
    help="user: own tasks; worker: claim and finish any task; admin: everything.",
)
def keys_create(db_path: Database | None, owner: str, role: str) -> None:
    """Create a key. The key is printed alone on the last line and never shown again.

    Example:

        taskledger keys create --db ./taskledger.db --owner alice --role user
    """
    store = open_store(resolve_db(db_path))
    try:
        record, key = key_store.create_key(store.records, owner, role)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    finally:
        store.close()
    click.echo(f"Created {record.role} key {record.key_id} for {record.owner}.", err=True)
    click.echo(key)


@keys.command("list")
@db_option
def keys_list(db_path: Database | None) -> None:
    """List keys (ids, owners, roles; never the keys themselves).

    Example:

        taskledger keys list --db ./taskledger.db
    """
    store = open_store(resolve_db(db_path))
    try:
        records = store.records.list_keys()
    finally:
        store.close()
    if not sys.stdout.isatty():
        for r in records:
            click.echo(
                json.dumps(
                    {
                        "key_id": r.key_id,
                        "owner": r.owner,
                        "role": r.role,
                        "created_at": r.created_at,
                        "revoked_at": r.revoked_at,
                    }
                )
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key id", "owner", "role", "created", "revoked")
    for r in records:
        table.add_row(r.key_id, r.owner, r.role, r.created_at, r.revoked_at or "")
    Console().print(table)


@keys.command("revoke")
@db_option
@click.argument("key_id")
def keys_revoke(db_path: Database | None, key_id: str) -> None:
    """Revoke a key by its id; requests with it get 401 from then on.

    Example:

        taskledger keys revoke --db ./taskledger.db 3f9a1c2b7d4e
    """
    store = open_store(resolve_db(db_path))
    try:
        revoked = key_store.revoke_key(store.records, key_id)
    finally:
        store.close()
    if not revoked:
        raise click.ClickException(f"No active key with id {key_id}")
    click.echo(f"Revoked key {key_id}.")


@keys.command("rotate-url-secret")
@db_option
def keys_rotate_url_secret(db_path: Database | None) -> None:
    """Replace the secret that signs file links (input_file_url, pdf_url).

    Every link handed out before is refused (403) from then on, by every server on the
    database, with no restart; servers sign new links with the new secret within 2 seconds.
    Clients get fresh links by reading their tasks again.

    Example:

        taskledger keys rotate-url-secret --db ./taskledger.db
    """
    store = open_store(resolve_db(db_path))
    try:
        store.records.rotate_url_secret()
    except LedgerError as exc:
        raise click.ClickException(f"Cannot rotate the link secret: {exc}") from None
    finally:
        store.close()
    click.echo("Rotated the link secret: links handed out before now are refused (403).")


@cli.group()
def webhooks() -> None:
    """Look at webhook subscriptions and their deliveries; send a delivery again."""


def _print_rows(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """JSON lines when stdout is not a terminal, else a table of ``columns`` (key, heading)."""
    if not sys.stdout.isatty():
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*(heading for _, heading in columns))
    for row in rows:
        table.add_row(*("" if row[key] is None else str(row[key]) for key, _ in columns))
    Console().print(table)


@webhooks.command("list")
@db_option
@click.option("--owner", default=None, help="Only this owner's subscriptions.")
def webhooks_list(db_path: Database | None, owner: str | None) -> None:
    """List the subscriptions (not the deleted ones), oldest first; never their secrets.

    Example:

        taskledger webhooks list --db ./taskledger.db --owner alice
    """
    store = open_store(resolve_db(db_path))
    try:
        found = store.webhooks.list_webhooks(owner)
    finally:
        store.close()
    rows = [
        {
            "id": s.webhook_id,
            "owner": s.owner,
            "url": s.url,
            "events": ",".join(s.event_types),
            "status": s.status,
            "disabled_reason": s.disabled_reason,
            "created_at": s.created_at,
        }
        for s in found
    ]
    _print_rows(
        rows,
        [
            ("id", "id"),
            ("owner", "owner (none: every owner)"),
            ("url", "url"),
            ("events", "events"),
            ("status", "status"),
            ("disabled_reason", "why disabled"),
        ],
    )


@webhooks.command("deliveries")
@db_option
@click.argument("webhook_id")
@click.option(
    "--after",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Only deliveries of events after this log position.",
)
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(min=1), help="At most this many."
)
@click.option(
    "--status",
    type=click.Choice(["pending", "succeeded", "failed"]),
    default=None,
    help="Only deliveries in this state.",
)
def webhooks_deliveries(
    db_path: Database | None, webhook_id: str, after: int, limit: int, status: str | None
) -> None:
    """A subscription's deliveries in the order of their events, with their attempts.
    WEBHOOK_ID is a subscription's id, or default:<owner> for that owner's tasks' own
    webhook_url.

    Example:

        taskledger webhooks deliveries --db ./taskledger.db wh_0192f3a4 --status failed
    """
    store = open_store(resolve_db(db_path))
    try:
        if (
            not webhook_id.startswith("default:")
            and store.webhooks.load_webhook(webhook_id) is None
        ):
            raise click.ClickException(f"No webhook subscription {webhook_id}")
        found: list[Delivery] = []
        while len(found) < limit:
            page = store.webhooks.list_deliveries(webhook_id, after=after, limit=500)
            if not page:
                break
            after = page[-1].position
            found += [d for d in page if status is None or d.status == status]
        found = found[:limit]
        rows = []
        for d in found:
            attempts = store.webhooks.attempts(d.delivery_id)
            rows.append(
                {
                    "id": d.delivery_id,
                    "position": d.position,
                    "event_type": d.event_type,
                    "task_id": d.task_id,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_status": d.last_status,
                    "last_error": d.last_error,
                    "next_attempt_at": d.next_attempt_at,
                    "attempt_log": [msgspec.to_builtins(a) for a in attempts],
                }
            )
    finally:
        store.close()
    _print_rows(
        rows,
        [
            ("id", "delivery (webhook-id)"),
            ("position", "pos"),
            ("event_type", "event"),
            ("task_id", "task"),
            ("status", "status"),
            ("attempts", "attempts"),
            ("last_status", "last status"),
            ("last_error", "last error"),
            ("next_attempt_at", "next try"),
        ],
    )


@webhooks.command("retry")
@db_option
@click.argument("delivery_id")
def webhooks_retry(db_path: Database | None, delivery_id: str) -> None:
    """Send a delivery again: it is due now, for one more attempt, whatever became of it. A
    running server sends it within a second.

    Example:

        taskledger webhooks retry --db ./taskledger.db msg_2b0c3f1e9a7d4c5b8e6f1a2b3c4d5e6f
    """
    from api.core import now

    store = open_store(resolve_db(db_path))
    try:
        with store.log.transaction() as tx:
            if store.webhooks.get_delivery(delivery_id, tx=tx) is None:
                raise click.ClickException(f"No delivery {delivery_id}")
            store.webhooks.retry_delivery(tx, delivery_id, now())
    except LedgerError as exc:
        raise click.ClickException(f"Cannot retry {delivery_id}: {exc}") from None
    finally:
        store.close()
    click.echo(f"Delivery {delivery_id} is due again now.")


@cli.command()
@click.option(
    "--url", required=True, envvar="TASKLEDGER_URL", help="The server, e.g. http://127.0.0.1:8000"
)
@click.option(
    "--key",
    required=True,
    envvar="TASKLEDGER_KEY",
    help="A worker key (taskledger keys create --role worker).",
)
@click.option(
    "--concurrency", default=1, show_default=True, type=int, help="Tasks worked on at once."
)
@click.option(
    "--worker-id",
    default=None,
    help="Name in the ledger's history (default: host name + random suffix).",
)
@click.option(
    "--lease-seconds",
    default=60,
    show_default=True,
    type=int,
    help="Lease asked for on claim; heartbeats renew it every third of it.",
)
@click.option(
    "--max-output-mb",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest output sent, in MiB (match the server's --max-output-mb); a task whose output "
    "is bigger fails with 'Output too large'.",
)
@click.option(
    "--processor",
    "processor_spec",
    default="scripts.processors:stream_text_chunks",
    show_default=True,
    help="module:function that turns (bytes, file_name, configuration) into output.",
)
@click.option(
    "--log-json/--log-console",
    default=None,
    help="Log format (default: console on a terminal, JSON otherwise).",
)
def worker(
    url: str,
    key: str,
    concurrency: int,
    worker_id: str | None,
    lease_seconds: int,
    max_output_mb: int,
    processor_spec: str,
    log_json: bool | None,
) -> None:
    """Run the reference worker: claim, heartbeat, process, complete or fail.

    SIGTERM stops it cleanly: no new claims, the task in hand finished, exit 0.

    Example:

        taskledger worker --url http://127.0.0.1:8000 --key tlk_... --concurrency 2
    """
    from api.requestlog import configure_logging
    from scripts.processors import load_processor
    from scripts.worker import Worker

    configure_logging(json=log_json)
    try:
        processor = load_processor(processor_spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--processor") from None
    runner = Worker(
        url,
        key,
        processor,
        worker_id=worker_id,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        max_output_bytes=max_output_mb * 1024 * 1024,
    )
    sys.exit(runner.run())


# The operator commands live in scripts.ops (which does not import this module); they are
# registered here, next to the group, so ``from scripts.cli import cli`` has every command.
cli.add_command(ops.replay)
cli.add_command(ops.history)
cli.add_command(ops.tail)
cli.add_command(ops.verify)
cli.add_command(ops.rebuild)
cli.add_command(ops.export)
cli.add_command(ops.import_)
cli.add_command(ops.backup)
cli.add_command(bench.bench_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
