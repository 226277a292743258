"""The PostgreSQL backend (psycopg 3 and psycopg_pool): the same log, hash chain, read models
and records as the embedded SQLite backend, on a database several server processes (nodes)
share. One module per concern: ``connection`` (the schema and its version, driver errors, the
lock and channel names), ``log`` (the EventLog: commit-ordered appends under an advisory lock,
blobs, LISTEN/NOTIFY), ``views``, ``records``, ``webhooks`` (subscriptions, secrets, the
outbox) and ``transfer``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ledger.errors import SchemaTooNew
from ledger.postgres import transfer
from ledger.postgres.connection import SCHEMA_VERSION, redact
from ledger.postgres.log import PostgresLog
from ledger.postgres.records import PostgresRecords
from ledger.postgres.views import PostgresViews
from ledger.postgres.webhooks import PostgresWebhooks


class PostgresBackend:
    """``ledger.log.Backend`` on a PostgreSQL database given by URL (its tables created, in the
    URL's schema, on first use)."""

    def __init__(self, url: str, *, pool_size: int = 8, timeout: float = 10.0) -> None:
        self.log = PostgresLog(url, pool_size=pool_size, timeout=timeout)
        self.views = PostgresViews(self.log)
        self.records = PostgresRecords(self.log)
        self.webhooks = PostgresWebhooks(self.log)

    @property
    def url(self) -> str:
        return self.log.url

    @property
    def name(self) -> str:
        """The URL without its password."""
        return self.log.name

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


__all__ = [
    "SCHEMA_VERSION",
    "PostgresBackend",
    "PostgresLog",
    "PostgresRecords",
    "PostgresViews",
    "PostgresWebhooks",
    "SchemaTooNew",
    "redact",
]
