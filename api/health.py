"""``GET /health`` and ``GET /``: no key needed, plain text, as Chunkr answers."""

from __future__ import annotations

from litestar import Controller, get

from ledger import __version__


class HealthController(Controller):
    path = "/"
    tags = ["health"]

    # security=[{}]: no key needed (it overrides the schema's global ApiKey requirement).
    @get(
        ["/health", "/"],
        media_type="text/plain",
        summary="Health check",
        sync_to_thread=False,
        security=[{}],
        exclude_from_auth=True,
    )
    def health(self) -> str:
        return f"OK - Version {__version__}"
