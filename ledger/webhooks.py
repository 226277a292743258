"""Webhook subscriptions as a second kind of stream in the log, and which task events notify.

A subscription is a stream ``webhook-<id>`` in the same append-only log as the tasks, so its
changes (made, secret rotated, disabled, deleted) are history like a task's. Its events and
rules are here, pure as the task decider is: no clock, no ids, no secrets (a subscription's
signing secret is a record of the application, never an event: events are exported and
audited). Which task events notify a subscriber, and under which name, is ``NOTIFIED``.

This module is a storage format too: the tags are written out and never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from ledger.errors import InvalidTransition, LedgerError

WEBHOOK_PREFIX = "webhook-"

#: The webhook event type each task event is delivered as (task events not named here, the
#: lease's own bookkeeping, notify nobody).
NOTIFIED: dict[str, str] = {
    "task_created": "task.created",
    "claimed": "task.started",
    "succeeded": "task.succeeded",
    "failed": "task.failed",
    "timed_out": "task.failed",
    "cancelled": "task.cancelled",
    "update_requested": "task.updated",
    "deleted": "task.deleted",
    "expired": "task.expired",
}
#: Every webhook event type, in the order a task usually meets them.
WEBHOOK_EVENT_TYPES: tuple[str, ...] = (
    "task.created",
    "task.started",
    "task.succeeded",
    "task.failed",
    "task.cancelled",
    "task.updated",
    "task.deleted",
    "task.expired",
)

ACTIVE = "active"
DISABLED = "disabled"
DELETED = "deleted"


def webhook_stream_id(webhook_id: str) -> str:
    return f"{WEBHOOK_PREFIX}{webhook_id}"


def is_webhook_stream(stream_id: str) -> bool:
    return stream_id.startswith(WEBHOOK_PREFIX)


def webhook_id_of(stream_id: str) -> str:
    return stream_id.removeprefix(WEBHOOK_PREFIX)


# -- events -----------------------------------------------------------------------------------


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of a subscription's events: which subscription, and when."""

    webhook_id: str
    at: datetime


class WebhookCreated(WebhookEvent, tag="webhook_created"):
    #: Whose tasks it hears of; None: every owner's (an admin's subscription).
    owner: str | None
    url: str
    #: The webhook event types it receives (a subset of WEBHOOK_EVENT_TYPES; all when made
    #: without a list).
    event_types: list[str]
    description: str | None = None


class WebhookSecretRotated(WebhookEvent, tag="webhook_secret_rotated"):
    #: Until when the secret it replaced still signs deliveries beside the new one.
    previous_valid_until: datetime


class WebhookDisabled(WebhookEvent, tag="webhook_disabled"):
    reason: str


class WebhookDeleted(WebhookEvent, tag="webhook_deleted"):
    pass


AnyWebhookEvent = WebhookCreated | WebhookSecretRotated | WebhookDisabled | WebhookDeleted
#: The stored tags of a subscription's events.
WEBHOOK_EVENT_TAGS: tuple[str, ...] = (
    "webhook_created",
    "webhook_secret_rotated",
    "webhook_disabled",
    "webhook_deleted",
)


# -- commands ---------------------------------------------------------------------------------


class WebhookCommand(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: str
    at: datetime
    #: The caller's scope, as on task commands: a user's own subscriptions only; None for admins
    #: and the dispatcher.
    scope: str | None = None


class CreateWebhook(WebhookCommand):
    owner: str | None
    url: str
    event_types: list[str]
    description: str | None = None


class RotateWebhookSecret(WebhookCommand):
    #: How long the old secret keeps signing beside the new one.
    previous_valid_until: datetime


class DisableWebhook(WebhookCommand):
    reason: str


class DeleteWebhook(WebhookCommand):
    pass


AnyWebhookCommand = CreateWebhook | RotateWebhookSecret | DisableWebhook | DeleteWebhook


# -- state ------------------------------------------------------------------------------------


class WebhookState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    webhook_id: str
    version: int = 0
    owner: str | None = None
    url: str = ""
    event_types: list[str] = []
    description: str | None = None
    status: str | None = None
    disabled_reason: str | None = None
    created_at: datetime | None = None
    secret_rotated_at: datetime | None = None
    previous_valid_until: datetime | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0 and self.status != DELETED

    def hears(self, owner: str | None, event_type: str) -> bool:
        """Whether a delivery of ``event_type`` for a task of ``owner`` is due to it."""
        return (
            self.status == ACTIVE
            and (self.owner is None or self.owner == owner)
            and event_type in self.event_types
        )


class WebhookNotFound(LedgerError):
    def __init__(self, message: str = "Webhook not found") -> None:
        super().__init__(message)


class WebhookExists(LedgerError):
    def __init__(self, message: str = "A webhook with this id already exists") -> None:
        super().__init__(message)


def decide(command: AnyWebhookCommand, state: WebhookState) -> list[AnyWebhookEvent]:
    """The events ``command`` produces against the subscription's state, or a LedgerError."""
    if isinstance(command, CreateWebhook):
        if state.version > 0:
            raise WebhookExists()
        return [
            WebhookCreated(
                webhook_id=command.webhook_id,
                at=command.at,
                owner=command.owner,
                url=command.url,
                event_types=list(command.event_types),
                description=command.description,
            )
        ]
    if not state.exists or (command.scope is not None and state.owner != command.scope):
        raise WebhookNotFound()
    if isinstance(command, RotateWebhookSecret):
        return [
            WebhookSecretRotated(
                webhook_id=command.webhook_id,
                at=command.at,
                previous_valid_until=command.previous_valid_until,
            )
        ]
    if isinstance(command, DisableWebhook):
        if state.status != ACTIVE:
            return []
        return [
            WebhookDisabled(webhook_id=command.webhook_id, at=command.at, reason=command.reason)
        ]
    if isinstance(command, DeleteWebhook):
        return [WebhookDeleted(webhook_id=command.webhook_id, at=command.at)]
    raise InvalidTransition(f"Unknown webhook command {type(command).__name__}")


def evolve(state: WebhookState, event: AnyWebhookEvent) -> WebhookState:
    version = state.version + 1
    if isinstance(event, WebhookCreated):
        return WebhookState(
            webhook_id=event.webhook_id,
            version=version,
            owner=event.owner,
            url=event.url,
            event_types=list(event.event_types),
            description=event.description,
            status=ACTIVE,
            created_at=event.at,
        )
    if isinstance(event, WebhookSecretRotated):
        return msgspec.structs.replace(
            state,
            version=version,
            secret_rotated_at=event.at,
            previous_valid_until=event.previous_valid_until,
        )
    if isinstance(event, WebhookDisabled):
        return msgspec.structs.replace(
            state, version=version, status=DISABLED, disabled_reason=event.reason
        )
    if isinstance(event, WebhookDeleted):
        return msgspec.structs.replace(state, version=version, status=DELETED)
    return msgspec.structs.replace(state, version=version)


def fold(events: Iterable[AnyWebhookEvent], state: WebhookState | None = None) -> WebhookState:
    for event in events:
        if state is None:
            state = WebhookState(webhook_id=event.webhook_id)
        state = evolve(state, event)
    if state is None:
        raise ValueError("fold of no events needs a starting state")
    return state
