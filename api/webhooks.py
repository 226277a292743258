"""Webhook use cases: subscriptions, their secrets, the deliveries' audit, and what a delivery
sends (the Standard Webhooks wire format: https://www.standardwebhooks.com).

A subscription is a stream in the log (``ledger.webhooks``): making, rotating, disabling and
deleting one are commands through group commit like a task's. Its signing secret is never an
event: it is kept with the application's records (``WebhookStore.set_secrets``), written in the
command's transaction, and shown once, in the answer that made it. A task's own
``webhook_url`` (create and update take one) is signed with its owner's default secret, the
subscription ``default`` (``GET /api/v1/webhooks/default`` shows it; it is made on first use).

Delivery itself (leases, attempts, retries) is ``api.dispatch``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
import msgspec

from api.core import ServiceCore, TaskView
from api.fetch import DownloadFailed, refusal_kind, resolve_host
from api.ids import new_task_id
from api.links import Hosts
from api.policy import Caller, UseCase, authorize
from api.refusals import BadRequest
from ledger.handler import Chore, Outcome
from ledger.log import Delivery, DeliveryAttempt, WebhookSecrets
from ledger.webhooks import (
    WEBHOOK_EVENT_TYPES,
    CreateWebhook,
    DeleteWebhook,
    RotateWebhookSecret,
    WebhookNotFound,
    WebhookState,
)
from projections.webhooks import DEFAULT_PREFIX, default_webhook_id

T = TypeVar("T")

SECRET_PREFIX = "whsec_"
#: The id of an owner's default subscription in the API (its tasks' own ``webhook_url``).
DEFAULT = "default"
#: How long a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)
MAX_URL = 2048
MAX_DESCRIPTION = 1000
MAX_DELIVERIES_PAGE = 100


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells one: ``whsec_`` and 32 random bytes in
    base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under ``secret``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(
    found: WebhookSecrets, message_id: str, timestamp: int, body: bytes, at: datetime
) -> str:
    """The ``webhook-signature`` value: a signature under the secret, and under the one it
    replaced while that still signs (space-separated, as the specification allows)."""
    parts = [sign(found.secret, message_id, timestamp, body)]
    if found.previous and found.previous_until is not None and at < found.previous_until:
        parts.append(sign(found.previous, message_id, timestamp, body))
    return " ".join(parts)


class WebhookView(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription as the API answers it; ``secret`` only in the answer that made (or
    rotated) it."""

    state: WebhookState
    secret: str | None = None


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    delivery: Delivery
    attempts: list[DeliveryAttempt]


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    deliveries: list[DeliveryView]
    #: Pass as ``after`` for the next page; None on the last.
    next_after: int | None = None


def _refused(message: str) -> BadRequest:
    return BadRequest(f"Webhook URL refused: {message}")


#: The longest a subscription's host may take to resolve.
RESOLVE_SECONDS = 10.0


async def _addresses(host: str, port: int) -> list[str]:
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            return await resolve_host(host, port)
    except DownloadFailed as exc:
        raise _refused(str(exc)) from None
    except TimeoutError:
        raise _refused(f"the host {host} did not resolve within {RESOLVE_SECONDS:g} s") from None


async def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """``url`` if the server will post to it, else BadRequest saying why: http or https, a host,
    no user name or password, at most 2,048 characters, and (unless ``allow_private``) a host
    that resolves to public addresses only. The dispatcher checks the addresses again where it
    connects (a host may resolve differently later: DNS rebinding)."""
    if len(url) > MAX_URL:
        raise _refused(f"longer than {MAX_URL} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _refused(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise _refused("only http and https URLs are allowed")
    if not parsed.host:
        raise _refused("the URL has no host")
    if parsed.userinfo:
        raise _refused("the URL holds a user name or password")
    if not allow_private:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        for address in await _addresses(parsed.host, port):
            kind = refusal_kind(address)
            if kind is not None:
                raise _refused(
                    f"{parsed.host} resolves to a private address ({address}, {kind}); the "
                    "server refuses such URLs unless started with --allow-private-webhooks"
                )
    return str(parsed.copy_with(fragment=None))


def check_event_types(types: Sequence[str] | None) -> list[str]:
    if types is None:
        return list(WEBHOOK_EVENT_TYPES)
    unknown = [t for t in types if t not in WEBHOOK_EVENT_TYPES]
    if unknown:
        raise BadRequest(
            f"Unknown webhook event type {unknown[0]!r}; the types are "
            + ", ".join(WEBHOOK_EVENT_TYPES)
        )
    if not types:
        raise BadRequest("events must name at least one event type (or be left out for all)")
    return list(dict.fromkeys(types))


class WebhookCases(ServiceCore):
    """The webhook use cases. ``wake_dispatcher`` is set by the composition root: a retry
    asked for is sent at once, not at the dispatcher's next look."""

    wake_dispatcher: Callable[[], None] | None = None

    def webhook_base_url(self) -> str:
        """The base of the links in a delivery's body: ``--public-url``, else the first allowed
        host (a delivery answers no request whose Host could say)."""
        public = self.settings.public_url
        if public:
            return str(public).rstrip("/")
        return "http://" + Hosts(self.settings.allowed_hosts).choose(None, "http")

    def delivered_view(self, delivery: Delivery) -> TaskView:
        """The task as a delivery's body shows it: as it was right after the delivery's event
        (its version folded on from a checkpoint), with its output's summary, never its
        chunks."""
        state = self.store.state_at(delivery.task_id, delivery.version)
        if state is None:
            raise LookupError(f"task {delivery.task_id} has no version {delivery.version}")
        return TaskView(state=self._summarised(state))

    def _webhook_id_for(self, caller: Caller, webhook_id: str) -> str:
        return default_webhook_id(caller.owner) if webhook_id == DEFAULT else webhook_id

    def _visible_webhook(self, caller: Caller, webhook_id: str) -> WebhookState | None:
        """The subscription if the caller's grant reaches it (None for its default one, which
        has no stream); WebhookNotFound otherwise, whether it exists or not."""
        grant = authorize(UseCase.WEBHOOKS, caller)
        if webhook_id == DEFAULT:
            return None
        if webhook_id.startswith(DEFAULT_PREFIX):
            raise WebhookNotFound()
        state = self.store.webhooks.load_webhook(webhook_id)
        if state is None or not state.exists:
            raise WebhookNotFound()
        if grant.owner is not None and state.owner != grant.owner:
            raise WebhookNotFound()
        return state

    async def create_webhook(
        self,
        caller: Caller,
        *,
        url: str,
        events: Sequence[str] | None = None,
        description: str | None = None,
        all_owners: bool = False,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> WebhookView:
        """A new subscription to the caller's tasks (an admin's may hear every owner's), with
        a new secret shown in this answer only."""
        grant = authorize(UseCase.WEBHOOKS, caller)
        if all_owners and grant.owner is not None:
            raise BadRequest("Only an admin key may subscribe to every owner's tasks")
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise BadRequest(f"description is longer than {MAX_DESCRIPTION} characters")
        types = check_event_types(events)
        checked = await check_webhook_url(url, allow_private=self.settings.allow_private_webhooks)
        secret = new_secret()
        command = CreateWebhook(
            webhook_id=f"wh_{new_task_id().replace('-', '')}",
            at=self.clock(),
            owner=None if all_owners else caller.owner,
            url=checked,
            event_types=types,
            description=description,
        )

        def build(tx: Any, outcome: Outcome[WebhookState]) -> WebhookView:
            self.store.webhooks.set_secrets(
                tx, outcome.after.webhook_id, WebhookSecrets(secret=secret)
            )
            return WebhookView(state=outcome.after, secret=secret)

        parts = (checked, types, description, all_owners)
        return await self._run(
            UseCase.WEBHOOKS,
            caller,
            command,
            WebhookView,
            build,
            parts,
            idempotency_key,
            request_id,
            # A retry with the same Idempotency-Key is answered without the secret: it is shown
            # once, and never kept beside the key's answers.
            kept=lambda view: msgspec.structs.replace(view, secret=None),
        )

    async def list_webhooks(self, caller: Caller) -> list[WebhookState]:
        grant = authorize(UseCase.WEBHOOKS, caller)
        return await self.reads.run(self.store.webhooks.list_webhooks, grant.owner)

    async def get_webhook(self, caller: Caller, webhook_id: str) -> WebhookView:
        """A subscription; ``default`` is the caller's default one, shown with its secret
        (made now if it has none yet)."""
        state = await self.reads.run(self._visible_webhook, caller, webhook_id)
        if state is not None:
            return WebhookView(state=state)
        webhook_id = default_webhook_id(caller.owner)
        found = await self.reads.run(self.store.webhooks.secrets, webhook_id)
        if found is None:
            found = await self._chore(functools.partial(self._default_secrets, webhook_id))
        return WebhookView(state=self._default_state(caller), secret=found.secret)

    async def _chore(self, run: Callable[[Any], T]) -> T:
        """``run(tx)`` in the group-commit writer's next transaction (``ledger.handler.Chore``):
        the service's own records written as a command's would be, never in a transaction of
        their own beside the writer's."""
        result: T = await asyncio.wrap_future(self.writer.submit_chore(Chore(run=run)))
        return result

    def _default_state(self, caller: Caller) -> WebhookState:
        return WebhookState(
            webhook_id=DEFAULT,
            owner=caller.owner,
            url="",
            event_types=list(WEBHOOK_EVENT_TYPES),
            description="Each task's own webhook_url",
            status="active",
        )

    def _default_secrets(self, webhook_id: str, tx: Any) -> WebhookSecrets:
        """In a write transaction: an owner's default secrets, made if it has none."""
        found = self.store.webhooks.secrets(webhook_id, tx=tx)
        if found is None:
            found = WebhookSecrets(secret=new_secret())
            self.store.webhooks.set_secrets(tx, webhook_id, found)
        return found

    async def delete_webhook(
        self, caller: Caller, webhook_id: str, *, request_id: str | None = None
    ) -> None:
        grant = authorize(UseCase.WEBHOOKS, caller)
        if webhook_id == DEFAULT or webhook_id.startswith(DEFAULT_PREFIX):
            raise BadRequest(
                "The default subscription cannot be deleted: it sends only to the tasks that "
                "name a webhook_url"
            )
        command = DeleteWebhook(webhook_id=webhook_id, at=self.clock(), scope=grant.owner)
        await self._run(
            UseCase.WEBHOOKS,
            caller,
            command,
            WebhookView,
            lambda tx, outcome: WebhookView(state=outcome.after),
            (webhook_id,),
            None,
            request_id,
        )

    async def rotate_secret(
        self, caller: Caller, webhook_id: str, *, request_id: str | None = None
    ) -> WebhookView:
        """A new secret, shown in this answer only; the old one keeps signing beside it for
        24 hours, so receivers can move over without missing a delivery."""
        grant = authorize(UseCase.WEBHOOKS, caller)
        at = self.clock()
        until = at + ROTATION_OVERLAP
        secret = new_secret()
        if webhook_id == DEFAULT:
            return await self._chore(functools.partial(self._rotate_default, caller, secret, until))
        command = RotateWebhookSecret(
            webhook_id=webhook_id, at=at, scope=grant.owner, previous_valid_until=until
        )

        def build(tx: Any, outcome: Outcome[WebhookState]) -> WebhookView:
            old = self.store.webhooks.secrets(webhook_id, tx=tx)
            previous = old.secret if old is not None else None
            self.store.webhooks.set_secrets(
                tx,
                webhook_id,
                WebhookSecrets(secret=secret, previous=previous, previous_until=until),
            )
            return WebhookView(state=outcome.after, secret=secret)

        return await self._run(
            UseCase.WEBHOOKS, caller, command, WebhookView, build, (webhook_id,), None, request_id
        )

    def _rotate_default(self, caller: Caller, secret: str, until: datetime, tx: Any) -> WebhookView:
        webhook_id = default_webhook_id(caller.owner)
        old = self.store.webhooks.secrets(webhook_id, tx=tx)
        self.store.webhooks.set_secrets(
            tx,
            webhook_id,
            WebhookSecrets(
                secret=secret,
                previous=old.secret if old is not None else None,
                previous_until=until if old is not None else None,
            ),
        )
        return WebhookView(state=self._default_state(caller), secret=secret)

    async def deliveries(
        self, caller: Caller, webhook_id: str, *, after: int = 0, limit: int = 50
    ) -> DeliveryPage:
        """A subscription's deliveries in the order of their events, each with its attempts."""
        if not 1 <= limit <= MAX_DELIVERIES_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_DELIVERIES_PAGE}")
        if after < 0:
            raise BadRequest("after must be 0 or more")

        def read() -> DeliveryPage:
            self._visible_webhook(caller, webhook_id)
            store = self.store.webhooks
            key = self._webhook_id_for(caller, webhook_id)
            found = store.list_deliveries(key, after=after, limit=limit + 1)
            more = len(found) > limit
            found = found[:limit]
            views = [
                DeliveryView(delivery=d, attempts=store.attempts(d.delivery_id)) for d in found
            ]
            return DeliveryPage(
                deliveries=views, next_after=found[-1].position if more and found else None
            )

        return await self.reads.run(read)

    async def retry_delivery(
        self, caller: Caller, webhook_id: str, delivery_id: str
    ) -> DeliveryView:
        """Send a delivery again now (one more attempt), whatever became of it."""

        await self.reads.run(self._visible_webhook, caller, webhook_id)
        key = self._webhook_id_for(caller, webhook_id)
        store = self.store.webhooks

        def retry(tx: Any) -> DeliveryView | None:
            # None, not an exception: a chore that raises makes its whole batch run again.
            found = store.get_delivery(delivery_id, tx=tx)
            if found is None or found.webhook_id != key:
                return None
            retried = store.retry_delivery(tx, delivery_id, self.clock())
            if retried is None:
                return None
            return DeliveryView(delivery=retried, attempts=store.attempts(delivery_id, tx=tx))

        view = await self._chore(retry)
        if view is None:
            raise DeliveryNotFound()
        if self.wake_dispatcher is not None:
            self.wake_dispatcher()
        return view


class DeliveryNotFound(WebhookNotFound):
    def __init__(self, message: str = "Delivery not found") -> None:
        super().__init__(message)
