"""The webhook read models, written in the command's transaction.

* ``SubscriptionsProjection``: each subscription's folded state (``webhooks`` rows), from its
  ``webhook-`` stream; also where the command handler reads a subscription's state from.
* ``OutboxProjection``: for each task event that notifies (``ledger.webhooks.NOTIFIED``), one
  delivery per active subscription that hears of the task's owner, and one to the task's own
  ``webhook_url``. Written in the same transaction as the event, so no committed change is ever
  without its deliveries, and none exists for a change that did not commit. The deliveries are
  operational state (the dispatcher's attempts), not a projection a rebuild makes again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ledger.events import tag_of
from ledger.log import Delivery, RecordedEvent, WebhookStore, task_id_of
from ledger.state import TaskState
from ledger.webhooks import NOTIFIED, WebhookState

#: The subscription id of an owner's deliveries to its tasks' own ``webhook_url``.
DEFAULT_PREFIX = "default:"


def default_webhook_id(owner: str) -> str:
    return f"{DEFAULT_PREFIX}{owner}"


def delivery_id(webhook_id: str, position: int) -> str:
    """The ``webhook-id`` of the delivery of the event at ``position`` to ``webhook_id``: the
    same however often it is worked out, so writing it twice leaves one delivery."""
    digest = hashlib.sha256(f"{webhook_id}\n{position}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


class SubscriptionsProjection:
    def __init__(self, webhooks: WebhookStore) -> None:
        self.webhooks = webhooks

    def load(self, tx: Any, webhook_id: str) -> WebhookState:
        found = self.webhooks.load_webhook(webhook_id, tx=tx)
        return found if found is not None else WebhookState(webhook_id=webhook_id)

    def apply(
        self,
        tx: Any,
        before: WebhookState,
        after: WebhookState,
        recorded: Sequence[RecordedEvent],
    ) -> None:
        self.webhooks.save_webhook(tx, after)


class OutboxProjection:
    def __init__(self, webhooks: WebhookStore) -> None:
        self.webhooks = webhooks
        #: Deliveries written by this process (a transaction rolled back later counts too): the
        #: dispatcher looks for due deliveries when it moves.
        self.written = 0

    def apply(
        self, tx: Any, before: TaskState, after: TaskState, recorded: Sequence[RecordedEvent]
    ) -> None:
        notified = [
            (r, kind) for r in recorded if (kind := NOTIFIED.get(tag_of(type(r.event)))) is not None
        ]
        owner = after.owner
        if not notified or owner is None:
            return
        deliveries = []
        listening = self.webhooks.listening(tx, owner)
        for r, kind in notified:
            for subscription in listening:
                if subscription.hears(owner, kind):
                    deliveries.append(
                        _delivery(subscription.webhook_id, subscription.url, owner, r, kind)
                    )
            if after.webhook_url is not None:
                webhook_id = default_webhook_id(owner)
                deliveries.append(_delivery(webhook_id, after.webhook_url, owner, r, kind))
        if deliveries:
            self.webhooks.add_deliveries(tx, deliveries)
            self.written += len(deliveries)


def _delivery(webhook_id: str, url: str, owner: str, r: RecordedEvent, kind: str) -> Delivery:
    return Delivery(
        delivery_id=delivery_id(webhook_id, r.position),
        webhook_id=webhook_id,
        owner=owner,
        task_id=task_id_of(r.stream_id),
        version=r.version,
        position=r.position,
        event_type=kind,
        url=url,
        created_at=r.recorded_at,
        next_attempt_at=r.recorded_at,
    )
