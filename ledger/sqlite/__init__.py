"""The embedded SQLite backend: one file holds the log, its blobs, the read models' tables and
the application's records. One module per concern: ``connection`` (pragmas, the events schema,
error mapping), ``lock`` (the cross-process write lock), ``log`` (the EventLog), ``blobs``,
``views`` (the read models' tables), ``records`` (keys and idempotency outcomes),
``webhooks`` (subscriptions, secrets, the outbox) and ``transfer`` (export, import, backup)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ledger.sqlite import records, transfer, views, webhooks
from ledger.sqlite.log import SqliteLog
from ledger.sqlite.records import SqliteRecords
from ledger.sqlite.views import SqliteViews
from ledger.sqlite.webhooks import SqliteWebhooks


class SqliteBackend:
    """``ledger.log.Backend`` on one SQLite file (created with its schema if new)."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
    ) -> None:
        self.log = SqliteLog(
            path,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            schemas=(views.SCHEMA, records.SCHEMA, webhooks.SCHEMA),
            migrations=views.MIGRATIONS,
        )
        self.views = SqliteViews(self.log)
        self.records = SqliteRecords(self.log)
        self.webhooks = SqliteWebhooks(self.log)

    @property
    def path(self) -> Path:
        return self.log.path

    def export_records(self) -> Iterator[dict[str, object]]:
        return transfer.export_records(self.log)

    def import_records(
        self,
        records: Iterable[dict[str, object]],
        *,
        tx: Any,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        return transfer.import_records(self.log, records, tx=tx, progress=progress)

    def backup(self, destination: str | Path) -> None:
        transfer.backup(self.log, destination)

    def close(self) -> None:
        self.log.close()


__all__ = ["SqliteBackend", "SqliteLog", "SqliteRecords", "SqliteViews", "SqliteWebhooks"]
