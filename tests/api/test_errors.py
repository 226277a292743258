"""The one error table: every error class the service raises answers its status with its own
message as a plain-text body (as Chunkr's errors are), and anything else is a 500 that says
nothing of its insides."""

from __future__ import annotations

import pytest

from api.errors import STATUS, handle_any
from api.policy import Forbidden
from api.refusals import (
    BadRequest,
    Busy,
    IdempotencyMismatch,
    InvalidKey,
    RateLimited,
    TooManyStreams,
)
from api.webhooks import DeliveryNotFound
from ledger.errors import (
    ConcurrencyConflict,
    EventLimitReached,
    InvalidTransition,
    LeaseLost,
    StorageUnavailable,
    TaskAlreadyExists,
    TaskNotFound,
    TransactionRolledBack,
)
from ledger.handler import NothingToDo
from ledger.webhooks import WebhookExists, WebhookNotFound

CASES = [
    (TaskNotFound(), 404, "Task not found"),
    (InvalidTransition("Task cannot be cancelled: status is Succeeded"), 400, None),
    (TaskAlreadyExists(), 409, "Task already exists"),
    (LeaseLost("Worker w does not hold the lease on this task: status is Failed"), 409, None),
    (ConcurrencyConflict("Stream task-x is at version 3, not 2"), 409, None),
    (StorageUnavailable("The database cannot be written right now (disk full)"), 503, None),
    (TransactionRolledBack("The database cannot be written right now (I/O)"), 503, None),
    (Busy("Too many large creates at once (4); retry shortly"), 503, None),
    (BadRequest("Limit is required when page is provided"), 400, None),
    (InvalidKey("Invalid or inactive API key"), 401, None),
    (Forbidden("A worker key cannot create tasks"), 403, None),
    (IdempotencyMismatch(), 422, None),
    (RateLimited(3), 429, "Rate limit exceeded; retry later"),
    (EventLimitReached(10), 429, "This task has reached its limit of 10 events; create a new task"),
    (
        TooManyStreams(8),
        429,
        "Too many open event streams for this key: 8 are open, the most one key may have;"
        " close one, then retry",
    ),
    (RecursionError(), 400, "Invalid request body: it is nested too deeply"),
    (WebhookNotFound(), 404, "Webhook not found"),
    (DeliveryNotFound(), 404, "Delivery not found"),
    (WebhookExists(), 409, "A webhook with this id already exists"),
]


@pytest.mark.parametrize("error, status, body", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_error_answers_its_status_and_message(error, status, body):
    response = handle_any(None, error)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.media_type == "text/plain"
    assert response.content == (body or str(error))


def test_the_cases_cover_the_table():
    covered = {type(error) for error, _, _ in CASES}
    assert set(STATUS) - {NothingToDo} <= covered


def test_headers_tell_when_to_retry_and_how_to_authenticate():
    assert handle_any(None, RateLimited(7)).headers["Retry-After"] == "7"  # type: ignore[arg-type]
    assert handle_any(None, TooManyStreams(8)).headers["Retry-After"] == "5"  # type: ignore[arg-type]
    assert handle_any(None, StorageUnavailable("x")).headers["Retry-After"] == "5"  # type: ignore[arg-type]
    assert handle_any(None, Busy("x")).headers["Retry-After"] == "5"  # type: ignore[arg-type]
    assert "Bearer" in handle_any(None, InvalidKey("x")).headers["WWW-Authenticate"]  # type: ignore[arg-type]
    # The event limit does not lift with time: nothing says when to retry.
    assert "Retry-After" not in handle_any(None, EventLimitReached(10)).headers  # type: ignore[arg-type]


def test_nothing_to_claim_is_an_empty_204_and_anything_else_a_bare_500():
    empty = handle_any(None, NothingToDo())  # type: ignore[arg-type]
    assert (empty.status_code, empty.content) == (204, b"")
    crash = handle_any(None, KeyError("secret internals"))  # type: ignore[arg-type]
    assert (crash.status_code, crash.content) == (500, "Internal server error")
