"""The Litestar HTTP API: Chunkr-compatible task routes over the ledger."""

from api.app import create_app
from api.settings import Settings

__all__ = ["Settings", "create_app"]
