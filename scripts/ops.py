"""Operator commands: replay, history, tail, verify, rebuild, export, import, backup.

Each prints a table on a terminal and JSON lines otherwise, and shows a progress bar (on a
terminal) for work that walks the whole log. ``bench`` (the benchmark; its measuring code is in
scripts.bench) is here too.

All are plain click commands: scripts.cli adds them to the ``taskledger`` group. This module
does not import scripts.cli.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from api.composition import Store, close_service, database_name, open_service
from api.policy import OPERATOR
from api.service import MAX_HISTORY_LIMIT
from api.settings import settings_for
from ledger import codec
from ledger.decider import evolve, initial_state
from ledger.errors import ImportRefused, LedgerError, TaskNotFound
from ledger.log import FeedQuery, RecordedEvent, stream_id_for, task_event
from projections import audit
from scripts.options import Database, db_option, resolve_db

err = Console(stderr=True)


def as_json_lines() -> bool:
    return not sys.stdout.isatty()


def emit(record: dict[str, Any]) -> None:
    click.echo(json.dumps(record, default=str))


def event_record(recorded: RecordedEvent) -> dict[str, Any]:
    data = msgspec.to_builtins(recorded.event)
    return {
        "position": recorded.position,
        "task_id": data.pop("task_id", None),
        **({"webhook_id": data.pop("webhook_id")} if "webhook_id" in data else {}),
        "version": recorded.version,
        "type": data.pop("type"),
        "recorded_at": codec.timestamp(recorded.recorded_at),
        "actor": {"key_id": recorded.actor.key_id, "role": recorded.actor.role},
        "request_id": recorded.request_id,
        "data": data,
    }


def open_store(db_path: Database | None, *, must_exist: bool = True) -> Store:
    """The ledger ``--db`` names. A SQLite file must exist unless ``must_exist`` is False; a
    PostgreSQL database is reached (its tables made if missing) or the command says why not."""
    db = resolve_db(db_path)
    if must_exist and isinstance(db, Path) and not db.exists():
        raise click.ClickException(f"No database at {db}")
    try:
        return Store(db)
    except LedgerError as exc:
        raise click.ClickException(f"Cannot open {database_name(db)}: {exc}") from None


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; a no-op otherwise."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def event_count(store: Store) -> int:
    return store.log.last_position()


def parse_until(value: str | None) -> tuple[int | None, datetime | None]:
    if value is None:
        return None, None
    if value.isdigit():
        return int(value), None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            "give a version number or an RFC 3339 time", param_hint="--until"
        ) from None
    if when.tzinfo is None:
        raise click.BadParameter("the time needs a time zone (e.g. Z)", param_hint="--until")
    return None, when


def pages(store: Store, task_id: str, until_version: int | None) -> Iterator[RecordedEvent]:
    """The task's events in version order (up to ``until_version``), read a page at a time."""
    cursor = 0
    while True:
        page = store.log.read_stream(
            stream_id_for(task_id), after=cursor, until_version=until_version, limit=1000
        )
        yield from page
        if len(page) < 1000:
            return
        cursor = page[-1].version


@click.command()
@db_option
@click.argument("task_id")
@click.option(
    "--until", "until", default=None, help="Stop after this version, or at this RFC 3339 time."
)
def replay(db_path: Database | None, task_id: str, until: str | None) -> None:
    """Step through a task's events, showing the state after each one.

    Example:

        taskledger replay --db ./taskledger.db 3f0c9d2e-6a51-4a57-9a3b-1f2b7f0c1e11 --until 3
    """
    until_version, until_time = parse_until(until)
    store = open_store(db_path)
    if store.version(task_id) == 0:
        raise click.ClickException(f"No events for task {task_id}")
    state = initial_state(task_id)
    table = Table("pos", "ver", "event", "recorded at", "status", "message", "configuration")
    for recorded in pages(store, task_id, until_version):
        if until_version is not None and recorded.version > until_version:
            break
        if until_time is not None and recorded.recorded_at > until_time:
            break
        state = evolve(state, task_event(recorded))
        record = event_record(recorded)
        snapshot = msgspec.to_builtins(state)
        if as_json_lines():
            emit({**record, "state": snapshot})
        else:
            table.add_row(
                str(recorded.position),
                str(recorded.version),
                record["type"],
                record["recorded_at"],
                str(state.status) + (f" ({state.gone})" if state.gone else ""),
                state.message,
                json.dumps(state.configuration.get("chunk_processing", state.configuration))[:60],
            )
    if not as_json_lines():
        Console().print(table)


@click.command()
@db_option
@click.argument("task_id")
@click.option(
    "--after",
    default=0,
    type=click.IntRange(min=0),
    help="Start after this version (default 0: from the first event).",
)
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=1),
    help="Print at most this many events (default: every one after --after).",
)
def history(db_path: Database | None, task_id: str, after: int, limit: int | None) -> None:
    """Print a task's events, oldest first, with who caused each.

    The events are read a page of 1000 at a time, as GET /api/v1/task/{id}/events serves them,
    and JSON lines are printed page by page (a table once at the end).

    Example:

        taskledger history --db ./taskledger.db 3f0c9d2e-6a51-4a57-9a3b-1f2b7f0c1e11 --after 1000
    """
    db = resolve_db(db_path)
    open_store(db).close()  # says why, if the ledger is not there
    shown: list[RecordedEvent] = []

    async def read() -> None:
        # The same use case the HTTP API serves, as the operator (who holds the file, so may
        # audit every task, deleted and expired ones included).
        service = open_service(settings_for(db, sweep_interval=0))
        try:
            cursor, left = after, limit
            while left is None or left > 0:
                size = MAX_HISTORY_LIMIT if left is None else min(left, MAX_HISTORY_LIMIT)
                page = await service.history(OPERATOR, task_id, after=cursor, limit=size)
                if as_json_lines():
                    print_events(page.events)
                else:
                    shown.extend(page.events)
                if left is not None:
                    left -= len(page.events)
                if page.next_after is None:
                    return
                cursor = page.next_after
        finally:
            close_service(service)

    try:
        asyncio.run(read())
    except TaskNotFound:
        raise click.ClickException(f"No events for task {task_id}") from None
    if not as_json_lines():
        print_events(shown)


def print_events(events: list[RecordedEvent]) -> None:
    if as_json_lines():
        for recorded in events:
            emit(event_record(recorded))
        return
    table = Table("pos", "task", "ver", "event", "recorded at", "actor", "request")
    for recorded in events:
        record = event_record(recorded)
        actor = f"{record['actor']['role']}:{record['actor']['key_id'] or '-'}"
        table.add_row(
            str(recorded.position),
            record["task_id"][:8],
            str(recorded.version),
            record["type"],
            record["recorded_at"],
            actor,
            recorded.request_id or "",
        )
    Console().print(table)


@click.command()
@db_option
@click.option(
    "--after",
    default=None,
    type=int,
    help="Start after this position (default: the last 20 events).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they are appended.")
def tail(db_path: Database | None, after: int | None, follow: bool) -> None:
    """Print the newest events of the whole log; --follow keeps going.

    Example:

        taskledger tail --db ./taskledger.db --follow
    """
    store = open_store(db_path)
    cursor = after if after is not None else max(0, store.log.last_position() - 20)
    while True:
        found = store.views.feed(FeedQuery(after=cursor, limit=500))
        if found:
            print_events(found)
            cursor = found[-1].position
            sys.stdout.flush()
            continue
        if not follow:
            return
        time.sleep(0.5)


@click.command()
@db_option
def verify(db_path: Database | None) -> None:
    """Fold every stream again, compare with the stored projections, and check the hash chain.

    Prints each difference; exits 1 if there is any, 0 if the database is sound.

    Example:

        taskledger verify --db ./taskledger.db
    """
    store = open_store(db_path)
    total = event_count(store)
    with progress_bar("verifying", 2 * total) as advance:
        differences = audit.verify(store.log, store.views, advance, webhooks=store.webhooks)
    for difference in differences:
        if as_json_lines():
            emit(difference.as_dict())
        else:
            where = difference.task_id or ""
            if difference.position is not None:
                where += f" @ position {difference.position}"
            err.print(f"[red]{difference.kind}[/red] {where}: {difference.detail}")
    if differences:
        err.print(f"{len(differences)} difference(s) in {total} events")
        sys.exit(1)
    err.print(f"OK: {total} events, hash chain intact, projections match the log")


@click.command()
@db_option
def rebuild(db_path: Database | None) -> None:
    """Drop every projection and rebuild it from the log, in one transaction.

    Example:

        taskledger rebuild --db ./taskledger.db
    """
    store = open_store(db_path)
    try:
        with progress_bar("rebuilding", event_count(store)) as advance:
            tasks = audit.rebuild(store.log, store.views, advance, webhooks=store.webhooks)
    except audit.UndecodableEvent as exc:
        raise click.ClickException(
            f"Cannot rebuild: {exc} (task {exc.task_id}); nothing was changed. "
            "Restore the log from a backup or an export."
        ) from None
    err.print(f"Rebuilt {tasks} tasks from {event_count(store)} events")


@click.command()
@db_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here instead of stdout.",
)
def export(db_path: Database | None, output: Path | None) -> None:
    """Write the whole log (events with envelopes and hashes, blobs, the API keys' hashes, the
    webhooks' signing secrets and deliveries) as JSON lines. It holds the signing secrets in the
    clear: keep it private (--output creates the file 0600, and a file standard output is
    redirected to is made 0600 too).

    Example:

        taskledger export --db ./taskledger.db > events.jsonl
    """
    store = open_store(db_path)
    # The export holds every input and output and the webhooks' signing secrets: a file of it
    # is its owner's alone (0600).
    out = (
        open(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
        if output
        else sys.stdout
    )
    if not output:
        _owner_only(sys.stdout)
    try:
        with progress_bar("exporting", event_count(store)) as advance:
            for record in store.backend.export_records():
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
                if record["kind"] == "event":
                    advance(1)
    finally:
        if output:
            out.close()


def _owner_only(stream: Any) -> None:
    """Make the regular file ``stream`` writes to (``taskledger export > file``: the shell made
    it with its umask) readable by its owner only; a pipe or a terminal is left as it is."""
    try:
        fd = stream.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


@click.command("import")
@db_option
@click.argument("source", type=click.File("r"), default="-")
def import_(db_path: Database | None, source: Any) -> None:
    """Load an export (a file, or standard input when SOURCE is left out or is -) into a new
    database, checking the hash chain; then build the projections. The export's API keys
    (their hashes) come along, so the same keys work on the new database, and so do the
    webhooks' signing secrets and deliveries (those not yet sent go out from the new one).

    Refuses (and writes nothing) if the chain is broken or the database already has events.

    Example:

        taskledger import events.jsonl --db ./restored.db

    or, moving a ledger to PostgreSQL:

        taskledger export --db ./taskledger.db | taskledger import --db postgresql://user@host/db
    """
    store = open_store(db_path, must_exist=False)

    def records() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(source, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ImportRefused(f"Line {number} is not JSON") from None

    try:
        with progress_bar("importing", 0) as advance, store.log.transaction() as tx:
            count = store.backend.import_records(records(), tx=tx, progress=advance)
            tasks = audit.rebuild(store.log, store.views, webhooks=store.webhooks)
    except ImportRefused as exc:
        raise click.ClickException(f"Import refused: {exc.message}") from None
    except (audit.UndecodableEvent, LedgerError) as exc:
        raise click.ClickException(f"Import refused: {exc}") from None
    err.print(f"Imported {count} events ({tasks} tasks) into {store.name}")


@click.command()
@db_option
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
def backup(db_path: Database | None, destination: Path) -> None:
    """Copy the database while the server keeps running: a consistent snapshot.

    Example:

        taskledger backup --db ./taskledger.db ./backups/taskledger-2026-11-28.db
    """
    store = open_store(db_path)
    try:
        store.backend.backup(destination)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"Backed up {store.name} to {destination}")
