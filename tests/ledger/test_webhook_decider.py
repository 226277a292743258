"""The pure parts of webhooks: the subscription decider (``ledger.webhooks``), a task's own
``webhook_url`` through update and cancel (``ledger.decider``), which task events notify whom
(``projections.webhooks``), the Standard Webhooks signature (``api.webhooks.sign``, checked
against the ``standardwebhooks`` reference library) and the retry schedule
(``api.dispatch.retry_delay``)."""

from __future__ import annotations

import asyncio
import base64
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from api.dispatch import BACKOFF, retry_delay
from api.refusals import BadRequest
from api.webhooks import (
    check_event_types,
    check_webhook_url,
    new_secret,
    sign,
    signature_header,
)
from ledger.commands import (
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    ExtendLease,
    UpdateTask,
)
from ledger.decider import decide as decide_task
from ledger.decider import fold as fold_task
from ledger.events import BlobRef, Cancelled, UpdateRequested
from ledger.log import RecordedEvent, WebhookSecrets
from ledger.webhooks import (
    ACTIVE,
    DELETED,
    DISABLED,
    NOTIFIED,
    WEBHOOK_EVENT_TYPES,
    CreateWebhook,
    DeleteWebhook,
    DisableWebhook,
    RotateWebhookSecret,
    WebhookCreated,
    WebhookDeleted,
    WebhookDisabled,
    WebhookExists,
    WebhookNotFound,
    WebhookSecretRotated,
    WebhookState,
    decide,
    evolve,
    fold,
    is_webhook_stream,
    webhook_id_of,
    webhook_stream_id,
)
from projections.webhooks import OutboxProjection, default_webhook_id, delivery_id

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ID = "wh_1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def create(**fields: Any) -> CreateWebhook:
    values: dict[str, Any] = {
        "webhook_id": ID,
        "at": T0,
        "owner": "alice",
        "url": "https://example.com/hook",
        "event_types": ["task.succeeded"],
    }
    return CreateWebhook(**{**values, **fields})


def run(state: WebhookState, command: Any) -> tuple[list[Any], WebhookState]:
    """The command's events, and the state they fold to."""
    events = decide(command, state)
    return events, fold(events, state)


def made(**fields: Any) -> WebhookState:
    return run(WebhookState(webhook_id=ID), create(**fields))[1]


# -- subscriptions ------------------------------------------------------------------------------


def test_create_makes_an_active_subscription():
    events, state = run(WebhookState(webhook_id=ID), create(description="d"))
    assert events == [
        WebhookCreated(
            webhook_id=ID,
            at=T0,
            owner="alice",
            url="https://example.com/hook",
            event_types=["task.succeeded"],
            description="d",
        )
    ]
    assert state.exists and state.status == ACTIVE and state.version == 1
    assert (state.owner, state.url, state.created_at) == ("alice", "https://example.com/hook", T0)


def test_create_twice_is_refused_even_after_delete():
    state = made()
    with pytest.raises(WebhookExists):
        decide(create(), state)
    _, deleted = run(state, DeleteWebhook(webhook_id=ID, at=at(1)))
    assert not deleted.exists
    with pytest.raises(WebhookExists):
        decide(create(), deleted)


@pytest.mark.parametrize(
    "command",
    [
        RotateWebhookSecret(webhook_id=ID, at=T0, previous_valid_until=at(86400)),
        DisableWebhook(webhook_id=ID, at=T0, reason="r"),
        DeleteWebhook(webhook_id=ID, at=T0),
    ],
    ids=["rotate", "disable", "delete"],
)
def test_every_change_needs_an_existing_subscription_in_scope(command):
    with pytest.raises(WebhookNotFound):
        decide(command, WebhookState(webhook_id=ID))
    state = made()
    with pytest.raises(WebhookNotFound):
        decide(msgspec.structs.replace(command, scope="bob"), state)
    assert decide(msgspec.structs.replace(command, scope="alice"), state)
    assert decide(command, state)  # no scope: an admin, or the dispatcher
    # An all-owners subscription is no user's.
    every = made(owner=None)
    with pytest.raises(WebhookNotFound):
        decide(msgspec.structs.replace(command, scope="alice"), every)
    _, deleted = run(state, DeleteWebhook(webhook_id=ID, at=at(1)))
    with pytest.raises(WebhookNotFound):
        decide(command, deleted)


def test_rotate_records_until_when_the_old_secret_signs():
    until = at(86400)
    events, state = run(
        made(), RotateWebhookSecret(webhook_id=ID, at=at(5), previous_valid_until=until)
    )
    assert events == [WebhookSecretRotated(webhook_id=ID, at=at(5), previous_valid_until=until)]
    assert state.secret_rotated_at == at(5)
    assert state.previous_valid_until == until
    assert state.status == ACTIVE and state.version == 2


def test_disable_once_then_nothing_more():
    events, state = run(made(), DisableWebhook(webhook_id=ID, at=at(1), reason="20 failed"))
    assert events == [WebhookDisabled(webhook_id=ID, at=at(1), reason="20 failed")]
    assert state.status == DISABLED and state.disabled_reason == "20 failed"
    assert state.exists
    assert decide(DisableWebhook(webhook_id=ID, at=at(2), reason="again"), state) == []
    # A disabled subscription may still be rotated and deleted.
    assert decide(RotateWebhookSecret(webhook_id=ID, at=at(3), previous_valid_until=at(9)), state)
    events, gone = run(state, DeleteWebhook(webhook_id=ID, at=at(4)))
    assert events == [WebhookDeleted(webhook_id=ID, at=at(4))]
    assert gone.status == DELETED and not gone.exists and gone.version == 3


def test_hears_only_its_owners_tasks_of_its_types_while_active():
    state = made(event_types=["task.succeeded", "task.failed"])
    assert state.hears("alice", "task.succeeded")
    assert state.hears("alice", "task.failed")
    assert not state.hears("alice", "task.created")
    assert not state.hears("bob", "task.succeeded")
    every = made(owner=None)
    assert every.hears("alice", "task.succeeded") and every.hears("bob", "task.succeeded")
    _, disabled = run(state, DisableWebhook(webhook_id=ID, at=at(1), reason="r"))
    assert not disabled.hears("alice", "task.succeeded")
    _, deleted = run(state, DeleteWebhook(webhook_id=ID, at=at(1)))
    assert not deleted.hears("alice", "task.succeeded")


def test_fold_and_the_stream_names():
    with pytest.raises(ValueError):
        fold([])
    events = [
        WebhookCreated(webhook_id=ID, at=T0, owner=None, url="u", event_types=["task.created"]),
        WebhookDisabled(webhook_id=ID, at=at(1), reason="r"),
    ]
    state = fold(events)
    assert (state.webhook_id, state.version, state.status) == (ID, 2, DISABLED)
    assert evolve(evolve(WebhookState(webhook_id=ID), events[0]), events[1]) == state
    assert fold(events[1:], fold(events[:1])) == state
    assert webhook_stream_id(ID) == "webhook-wh_1"
    assert is_webhook_stream("webhook-wh_1") and not is_webhook_stream("task-1")
    assert webhook_id_of(webhook_stream_id(ID)) == ID


def test_the_events_tags_are_a_storage_format():
    from ledger.webhooks import AnyWebhookEvent

    decoder = msgspec.json.Decoder(AnyWebhookEvent)
    for event, tag in [
        (WebhookCreated(webhook_id=ID, at=T0, owner="a", url="u", event_types=[]), "created"),
        (WebhookSecretRotated(webhook_id=ID, at=T0, previous_valid_until=T0), "secret_rotated"),
        (WebhookDisabled(webhook_id=ID, at=T0, reason="r"), "disabled"),
        (WebhookDeleted(webhook_id=ID, at=T0), "deleted"),
    ]:
        encoded = msgspec.json.encode(event)
        assert msgspec.json.decode(encoded)["type"] == f"webhook_{tag}"
        assert decoder.decode(encoded) == event


def test_every_webhook_event_type_is_what_some_task_event_notifies():
    assert set(NOTIFIED.values()) == set(WEBHOOK_EVENT_TYPES)
    assert NOTIFIED["timed_out"] == "task.failed"
    assert "lease_extended" not in NOTIFIED and "lease_expired" not in NOTIFIED


# -- a task's own webhook_url ---------------------------------------------------------------------

FILE = BlobRef(sha256="0" * 64, size=1)
OUT = BlobRef(sha256="1" * 64, size=1)
TASK = "t-1"


def task_run(*commands: Any) -> tuple[list[Any], Any]:
    events: list[Any] = []
    state = None
    for command in commands:
        from ledger.decider import initial_state

        new = decide_task(command, state or initial_state(TASK))
        events += new
        state = fold_task(new, state)
    return events, state


def done_task(url: str | None) -> list[Any]:
    return [
        CreateTask(
            task_id=TASK, at=T0, owner="alice", configuration={}, file=FILE, webhook_url=url
        ),
        ClaimTask(task_id=TASK, at=at(1), worker_id="w", lease_until=at(60)),
        CompleteTask(task_id=TASK, at=at(2), worker_id="w", output=OUT),
    ]


def test_an_update_moves_the_tasks_webhook_url_and_a_cancel_puts_it_back():
    commands = done_task("https://a.example/1")
    _, state = task_run(*commands)
    assert state.webhook_url == "https://a.example/1"
    update = UpdateTask(task_id=TASK, at=at(3), configuration={}, webhook_url="https://b.example/2")
    events, updated = task_run(*commands, update)
    assert isinstance(events[-1], UpdateRequested)
    assert events[-1].webhook_url == "https://b.example/2"
    assert updated.webhook_url == "https://b.example/2"
    events, cancelled = task_run(*commands, update, CancelTask(task_id=TASK, at=at(4)))
    assert isinstance(events[-1], Cancelled)
    assert cancelled.webhook_url == "https://a.example/1"
    assert cancelled.status == state.status


def test_an_update_without_a_webhook_url_keeps_the_one_it_had():
    commands = done_task("https://a.example/1")
    _, updated = task_run(*commands, UpdateTask(task_id=TASK, at=at(3), configuration={}))
    assert updated.webhook_url == "https://a.example/1"
    # ... and one that had none gets one by update, which a cancel takes away again.
    plain = done_task(None)
    update = UpdateTask(task_id=TASK, at=at(3), configuration={}, webhook_url="https://c/3")
    _, moved = task_run(*plain, update)
    assert moved.webhook_url == "https://c/3"
    _, back = task_run(*plain, update, CancelTask(task_id=TASK, at=at(4)))
    assert back.webhook_url is None


# -- the outbox: who hears of which task event ----------------------------------------------------


class FakeWebhooks:
    def __init__(self, subscriptions: list[WebhookState]) -> None:
        self.subscriptions = subscriptions
        self.added: list[Any] = []

    def listening(self, tx: Any, owner: str) -> list[WebhookState]:
        return [s for s in self.subscriptions if s.status == ACTIVE]

    def add_deliveries(self, tx: Any, deliveries: Any) -> None:
        self.added += deliveries


def recorded(event: Any, position: int, version: int) -> RecordedEvent:
    from ledger.log import Actor

    return RecordedEvent(
        position=position,
        stream_id=f"task-{TASK}",
        version=version,
        event=event,
        recorded_at=event.at,
        actor=Actor(key_id="k", role="user"),
        request_id=None,
        idempotency_key=None,
    )


def test_the_outbox_writes_one_delivery_per_listener_and_the_tasks_own_url():
    alice = made(webhook_id="wh_a", owner="alice", event_types=["task.created"])
    bob = made(webhook_id="wh_b", owner="bob", event_types=["task.created"])
    every = made(webhook_id="wh_all", owner=None, event_types=list(WEBHOOK_EVENT_TYPES))
    other_type = made(webhook_id="wh_s", owner="alice", event_types=["task.succeeded"])
    store = FakeWebhooks([alice, bob, every, other_type])
    outbox = OutboxProjection(store)  # type: ignore[arg-type]
    events, state = task_run(done_task("https://own.example/x")[0])
    outbox.apply(None, state, state, [recorded(events[0], 7, 1)])
    by_hook = {d.webhook_id: d for d in store.added}
    assert set(by_hook) == {"wh_a", "wh_all", default_webhook_id("alice")}
    own = by_hook[default_webhook_id("alice")]
    assert own.url == "https://own.example/x"
    assert all(d.event_type == "task.created" and d.position == 7 for d in store.added)
    assert all(d.delivery_id == delivery_id(d.webhook_id, 7) for d in store.added)
    assert all(d.task_id == TASK and d.owner == "alice" for d in store.added)
    assert outbox.written == 3
    # The claim is task.started: only the all-types subscription and the task's own URL.
    first_two, claimed = task_run(*done_task("https://own.example/x")[:2])
    outbox.apply(None, claimed, claimed, [recorded(first_two[1], 8, 2)])
    started = store.added[3:]
    assert {d.webhook_id for d in started} == {"wh_all", default_webhook_id("alice")}
    assert {d.event_type for d in started} == {"task.started"}
    # A lease's own bookkeeping notifies nobody.
    extend = ExtendLease(task_id=TASK, at=at(2), worker_id="w", lease_until=at(90))
    extended, after = task_run(*done_task("https://own.example/x")[:2], extend)
    outbox.apply(None, claimed, after, [recorded(extended[2], 9, 3)])
    assert len(store.added) == 5 and outbox.written == 5


def test_a_delivery_id_is_the_same_however_often_worked_out():
    assert delivery_id("wh_a", 7) == delivery_id("wh_a", 7)
    assert delivery_id("wh_a", 7) != delivery_id("wh_a", 8)
    assert delivery_id("wh_a", 7) != delivery_id("wh_b", 7)
    assert delivery_id("wh_a", 7).startswith("msg_")


# -- signing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"task.created"}',
        b"",
        "caf\N{LATIN SMALL LETTER E WITH ACUTE}".encode(),
        bytes(range(256)),
    ],
)
def test_sign_agrees_with_the_reference_library(body):
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    stamp = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    ours = sign(secret, "msg_abc", int(stamp.timestamp()), body)
    assert ours == Webhook(secret).sign("msg_abc", stamp, body)
    assert ours != sign(new_secret(), "msg_abc", int(stamp.timestamp()), body)
    assert ours != sign(secret, "msg_abd", int(stamp.timestamp()), body)
    assert ours != sign(secret, "msg_abc", int(stamp.timestamp()) + 1, body)


def headers_for(header: str, stamp: int, message_id: str = "msg_1") -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(stamp), "webhook-signature": header}


def test_the_signature_header_holds_the_old_secret_until_it_lapses():
    import time

    old, new = new_secret(), new_secret()
    stamp = int(time.time())
    body = b'{"type":"task.created","data":{}}'
    until = at(86400)
    found = WebhookSecrets(secret=new, previous=old, previous_until=until)
    both = signature_header(found, "msg_1", stamp, body, until - timedelta(seconds=1))
    assert both.split(" ") == [sign(new, "msg_1", stamp, body), sign(old, "msg_1", stamp, body)]
    for secret in (old, new):
        Webhook(secret).verify(body, headers_for(both, stamp))
    lapsed = signature_header(found, "msg_1", stamp, body, until)
    assert lapsed == sign(new, "msg_1", stamp, body)
    Webhook(new).verify(body, headers_for(lapsed, stamp))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers_for(lapsed, stamp))
    never = signature_header(WebhookSecrets(secret=new), "msg_1", stamp, body, T0)
    assert never == sign(new, "msg_1", stamp, body)


# -- the retry schedule ---------------------------------------------------------------------------


def test_retry_delay_follows_the_schedule_with_jitter_bounds():
    assert BACKOFF == (5, 30, 120, 600, 1800, 3600, 10800, 21600)
    for attempts, base in enumerate(BACKOFF, start=1):
        assert retry_delay(attempts, rand=0.5) == pytest.approx(base)
        assert retry_delay(attempts, rand=0.0) == pytest.approx(base * 0.8)
        assert retry_delay(attempts, rand=1.0) == pytest.approx(base * 1.2)
        assert retry_delay(attempts, 0.001, rand=0.5) == pytest.approx(base * 0.001)
    # Past the schedule's end the last delay repeats.
    assert retry_delay(9, rand=0.5) == pytest.approx(21600)
    assert retry_delay(50, rand=0.5) == pytest.approx(21600)
    assert retry_delay(3, 0.0) == 0.0


def test_retry_delay_jitter_is_random_within_20_percent():
    random.seed(16)
    samples = [retry_delay(2) for _ in range(2000)]
    assert all(24.0 <= s <= 36.0 for s in samples)
    assert min(samples) < 25.0 and max(samples) > 35.0
    assert len(set(samples)) > 1900


# -- what a subscription may name -----------------------------------------------------------------


def test_event_types():
    assert check_event_types(None) == list(WEBHOOK_EVENT_TYPES)
    assert check_event_types(["task.failed", "task.created", "task.failed"]) == [
        "task.failed",
        "task.created",
    ]
    with pytest.raises(BadRequest, match="task.nope"):
        check_event_types(["task.created", "task.nope"])
    with pytest.raises(BadRequest):
        check_event_types([])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/x#frag", "http://127.0.0.1:8080/x"),
        ("https://10.1.2.3/hook?a=1", "https://10.1.2.3/hook?a=1"),
    ],
)
def test_a_private_url_passes_only_with_the_flag(url, allowed):
    assert asyncio.run(check_webhook_url(url, allow_private=True)) == allowed
    with pytest.raises(BadRequest, match="--allow-private-webhooks"):
        asyncio.run(check_webhook_url(url, allow_private=False))


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "http://u:p@127.0.0.1/", "not a url", "//127.0.0.1/x", "mailto:a@b"],
)
def test_a_url_is_refused_whatever_the_flag(url):
    with pytest.raises(BadRequest, match="Webhook URL refused"):
        asyncio.run(check_webhook_url(url, allow_private=True))


def test_the_webhook_event_tags_are_the_union_s_tags():
    from ledger.events import tag_of
    from ledger.webhooks import WEBHOOK_EVENT_TAGS, AnyWebhookEvent

    assert WEBHOOK_EVENT_TAGS == tuple(tag_of(t) for t in AnyWebhookEvent.__args__)
