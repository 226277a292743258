"""API keys: stored as SHA-256 hashes, looked up by their public id, compared in constant time;
and the per-key rate limit.

A key reads ``tlk_<key id>_<secret>``. The id (12 hex characters) is not secret and is what the
log records as the actor; the database keeps only ``sha256(key)``, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from datetime import UTC, datetime

from api.policy import ROLES, Caller
from api.refusals import InvalidKey, RateLimited
from ledger.log import KeyRecord, Records

PREFIX = "tlk_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def create_key(records: Records, owner: str, role: str) -> tuple[KeyRecord, str]:
    """Make a key; returns its record and the key itself (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not owner or not owner.strip():
        raise ValueError("owner must not be empty")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(key_id=key_id, owner=owner, role=role, created_at=_now())
    records.add_key(record, _hash(key))
    return record, key


def revoke_key(records: Records, key_id: str) -> bool:
    """Revoke a key by id; False if there is no such active key."""
    return records.revoke_key(key_id, _now())


def is_active(records: Records, key_id: str) -> bool:
    """Whether the key with this id exists and is not revoked (what an open stream or a waiting
    claim re-checks: the key it was authenticated with may have been revoked since)."""
    found = records.find_key(key_id)
    return found is not None and found[0].revoked_at is None


def parse_authorization(header: str | None) -> str:
    """The key from ``Authorization: <key>`` or ``Authorization: Bearer <key>``."""
    if header is None:
        raise InvalidKey("Authorization header is missing")
    value = header.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    if not value:
        raise InvalidKey("API key is missing")
    return value


def authenticate(records: Records, key: str) -> Caller:
    if not key.startswith(PREFIX) or len(key) < len(PREFIX) + 14 or key[len(PREFIX) + 12] != "_":
        raise InvalidKey("Invalid or inactive API key")
    found = records.find_key(key[len(PREFIX) : len(PREFIX) + 12])
    # Hash and compare even when the id is unknown, so timing says nothing about which ids exist.
    stored = found[1] if found else "0" * 64
    matches = hmac.compare_digest(_hash(key), stored)
    if found is None or not matches or found[0].revoked_at is not None:
        raise InvalidKey("Invalid or inactive API key")
    record = found[0]
    return Caller(key_id=record.key_id, owner=record.owner, role=record.role)


class KeyCache:
    """Authenticated callers for a short while, so a burst of requests does one lookup per key.
    Revocation takes effect within ``ttl`` seconds."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Caller | None:
        with self._lock:
            entry = self._entries.get(_hash(key))
        if entry and entry[0] > time.monotonic():
            return entry[1]
        return None

    def put(self, key: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            # Held by digest, so no plaintext key sits in the server's memory longer than a request.
            self._entries[_hash(key)] = (time.monotonic() + self.ttl, caller)


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second on average, bursts up to ``burst``.
    Counted per server process."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                raise RateLimited(max(1, int((1 - tokens) / self.rate + 0.999)))
            self._buckets[key_id] = (tokens - 1, now)


class Gate:
    """Authentication as the service runs it: the key cache, the lookup, the rate limit."""

    def __init__(self, records: Records, rate_limiter: RateLimiter | None = None) -> None:
        self.records = records
        self.cache = KeyCache()
        self.rate_limiter = rate_limiter

    def authenticate(self, header: str | None) -> Caller:
        """The caller an Authorization header names (InvalidKey: 401; RateLimited: 429)."""
        key = parse_authorization(header)
        caller = self.cache.get(key)
        if caller is None:
            caller = authenticate(self.records, key)
            self.cache.put(key, caller)
        if self.rate_limiter is not None:
            self.rate_limiter.check(caller.key_id)
        return caller
