"""The LedgerError tree. Each error carries the message a person (and the API) will see."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TaskNotFound(LedgerError):
    """No such task, or it was deleted or expired, or it belongs to another owner."""

    def __init__(self, message: str = "Task not found") -> None:
        super().__init__(message)


class TaskAlreadyExists(LedgerError):
    def __init__(self, message: str = "Task already exists") -> None:
        super().__init__(message)


class InvalidTransition(LedgerError):
    """The command is not allowed in the task's current status."""


class EventLimitReached(LedgerError):
    """The task's stream holds as many events as a task may have: it runs no more updates."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"This task has reached its limit of {limit} events; create a new task")
        self.limit = limit


class LeaseLost(LedgerError):
    """The worker does not hold the task's current lease (it expired and the task moved on)."""


class ConcurrencyConflict(LedgerError):
    """An append was made against a stale stream version."""


class StorageUnavailable(LedgerError):
    """The database cannot be written (disk full, read-only file, locked for too long)."""


class TransactionRolledBack(StorageUnavailable):
    """The database abandoned the whole write transaction (SQLite does on a full disk or an I/O
    error), so every command in it is undone, not only the one that hit the error."""


class DuplicateRecord(LedgerError):
    """A record with this key is already stored (another request committed it first)."""

    def __init__(self, message: str = "Already recorded") -> None:
        super().__init__(message)


class ImportRefused(LedgerError):
    """An export that cannot be imported as it is (broken chain, bad record, non-empty target)."""


class SchemaTooNew(LedgerError):
    """The database was written by a newer taskledger than this one (its schema version is
    higher than the code's): refused rather than misread."""
