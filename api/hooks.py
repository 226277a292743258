"""Webhook routes: subscriptions (make, list, read, delete, rotate the secret) and their
deliveries (list, retry). ``default`` names the caller's default subscription: its tasks' own
``webhook_url`` deliveries and the secret that signs them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import guard, request_id
from api.openapi import AUTH, READ, WRITE, responses
from api.policy import UseCase
from api.tasks import HttpRequest, IdempotencyKey, Service
from api.webhooks import DEFAULT, MAX_DELIVERIES_PAGE, DeliveryPage, DeliveryView, WebhookView


class WebhookBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new subscription."""

    url: str
    #: The event types to receive (task.created, task.started, task.succeeded, task.failed,
    #: task.cancelled, task.updated, task.deleted, task.expired); all when left out.
    events: list[str] | None = None
    description: str | None = None
    #: An admin's subscription to every owner's tasks.
    all_owners: bool = False


class WebhookResponse(msgspec.Struct, kw_only=True):
    id: str
    #: None for ``default`` (each task names its own).
    url: str | None
    events: list[str]
    description: str | None
    #: ``active`` or ``disabled``.
    status: str
    disabled_reason: str | None
    #: The owner whose tasks it hears of; None: every owner's.
    owner: str | None
    created_at: datetime | None
    secret_rotated_at: datetime | None
    #: Until when the secret before the last rotation still signs beside the new one.
    previous_secret_expires_at: datetime | None
    #: Only in the answer that made the subscription or rotated its secret (and always for
    #: ``default``).
    secret: str | msgspec.UnsetType = msgspec.UNSET


class WebhookList(msgspec.Struct, kw_only=True):
    webhooks: list[WebhookResponse]


class AttemptResponse(msgspec.Struct, kw_only=True):
    attempt: int
    at: datetime
    duration_ms: float
    #: The receiver's status; None when it gave no answer.
    status_code: int | None
    error: str | None
    #: The first kilobyte of the receiver's answer.
    response: str | None


class DeliveryResponse(msgspec.Struct, kw_only=True):
    #: The ``webhook-id`` every attempt sends.
    id: str
    event_type: str
    task_id: str
    #: The event's position in the log.
    position: int
    url: str
    #: ``pending``, ``succeeded`` or ``failed``.
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[AttemptResponse]


class DeliveryList(msgspec.Struct, kw_only=True):
    deliveries: list[DeliveryResponse]
    #: Pass as ``after`` for the next page; None on the last.
    next_after: int | None


def render_webhook(view: WebhookView) -> WebhookResponse:
    state = view.state
    return WebhookResponse(
        id=state.webhook_id,
        url=None if state.webhook_id == DEFAULT else state.url,
        events=list(state.event_types),
        description=state.description,
        status=state.status or "active",
        disabled_reason=state.disabled_reason,
        owner=state.owner,
        created_at=state.created_at,
        secret_rotated_at=state.secret_rotated_at,
        previous_secret_expires_at=state.previous_valid_until,
        secret=view.secret if view.secret is not None else msgspec.UNSET,
    )


def render_delivery(view: DeliveryView) -> DeliveryResponse:
    d = view.delivery
    return DeliveryResponse(
        id=d.delivery_id,
        event_type=d.event_type,
        task_id=d.task_id,
        position=d.position,
        url=d.url,
        status=d.status,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        next_attempt_at=d.next_attempt_at,
        created_at=d.created_at,
        finished_at=d.finished_at,
        attempt_log=[
            AttemptResponse(
                attempt=a.attempt,
                at=a.at,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error,
                response=a.response,
            )
            for a in view.attempts
        ],
    )


def render_page(page: DeliveryPage) -> DeliveryList:
    return DeliveryList(
        deliveries=[render_delivery(v) for v in page.deliveries], next_after=page.next_after
    )


WEBHOOK = guard(UseCase.WEBHOOKS)


class WebhooksController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    @post(
        "/",
        status_code=201,
        summary="Subscribe to task events (the secret is shown in this answer only)",
        guards=[WEBHOOK],
        responses=responses(400, *AUTH, 403, 422, 503),
    )
    async def create_webhook(
        self,
        request: HttpRequest,
        service: Service,
        data: JSONBody[WebhookBody],
        idempotency_key: IdempotencyKey = None,
    ) -> WebhookResponse:
        view = await service.create_webhook(
            request.user,
            url=data.url,
            events=data.events,
            description=data.description,
            all_owners=data.all_owners,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
        )
        return render_webhook(view)

    @get("/", summary="List subscriptions", guards=[WEBHOOK], responses=responses(*AUTH, 403))
    async def list_webhooks(self, request: HttpRequest, service: Service) -> WebhookList:
        found = await service.list_webhooks(request.user)
        return WebhookList(webhooks=[render_webhook(WebhookView(state=s)) for s in found])

    @get(
        "/{webhook_id:str}",
        summary="Read a subscription (default: the owner's default one, with its secret)",
        guards=[WEBHOOK],
        responses=responses(*READ, 403),
    )
    async def get_webhook(
        self, request: HttpRequest, service: Service, webhook_id: FromPath[str]
    ) -> WebhookResponse:
        return render_webhook(await service.get_webhook(request.user, webhook_id))

    @delete(
        "/{webhook_id:str}",
        status_code=204,
        summary="Delete a subscription (its deliveries not yet sent are not sent)",
        guards=[WEBHOOK],
        responses=responses(*WRITE),
    )
    async def delete_webhook(
        self, request: HttpRequest, service: Service, webhook_id: FromPath[str]
    ) -> None:
        await service.delete_webhook(request.user, webhook_id, request_id=request_id(request))

    @post(
        "/{webhook_id:str}/rotate-secret",
        status_code=200,
        summary="A new secret; the old one signs beside it for 24 hours",
        guards=[WEBHOOK],
        responses=responses(*WRITE),
    )
    async def rotate_secret(
        self, request: HttpRequest, service: Service, webhook_id: FromPath[str]
    ) -> WebhookResponse:
        view = await service.rotate_secret(request.user, webhook_id, request_id=request_id(request))
        return render_webhook(view)

    @get(
        "/{webhook_id:str}/deliveries",
        summary="A subscription's deliveries, in the order of their events, with every attempt",
        guards=[WEBHOOK],
        responses=responses(*READ, 403),
    )
    async def deliveries(
        self,
        request: HttpRequest,
        service: Service,
        webhook_id: FromPath[str],
        after: Annotated[int, QueryParameter(ge=0, description="A page's next_after")] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_DELIVERIES_PAGE)] = 50,
    ) -> DeliveryList:
        page = await service.deliveries(request.user, webhook_id, after=after, limit=limit)
        return render_page(page)

    @post(
        "/{webhook_id:str}/deliveries/{delivery_id:str}/retry",
        status_code=202,
        summary="Send a delivery again now (one more attempt)",
        guards=[WEBHOOK],
        responses=responses(*WRITE),
    )
    async def retry_delivery(
        self,
        request: HttpRequest,
        service: Service,
        webhook_id: FromPath[str],
        delivery_id: FromPath[str],
    ) -> DeliveryResponse:
        view = await service.retry_delivery(request.user, webhook_id, delivery_id)
        return render_delivery(view)
