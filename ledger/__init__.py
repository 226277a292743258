"""taskledger's domain and event log: a pure decider and an append-only SQLite event store."""

__version__ = "0.1.0"
