"""WebhookStore contract: subscription rows (a projection of the ``webhook-`` streams), their
signing secrets, and the outbox of deliveries: added in the command's transaction, leased by
the dispatchers of one or several processes, finished attempt by attempt, retried, listed, and
each subscription's run of failed deliveries."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime

import msgspec
import pytest
from backend_support import T0, at, within

from ledger.log import DELIVERED, GAVE_UP, PENDING, Delivery, DeliveryAttempt, WebhookSecrets
from ledger.webhooks import ACTIVE, DELETED, DISABLED, WEBHOOK_EVENT_TYPES, WebhookState


def hook(
    webhook_id: str,
    owner: str | None = "alice",
    t: float = 0,
    *,
    status: str = ACTIVE,
    version: int = 1,
) -> WebhookState:
    return WebhookState(
        webhook_id=webhook_id,
        version=version,
        owner=owner,
        url=f"https://example.com/{webhook_id}",
        event_types=list(WEBHOOK_EVENT_TYPES),
        status=status,
        disabled_reason="20 failed deliveries in a row" if status == DISABLED else None,
        created_at=at(t),
    )


def save(backend, *states: WebhookState) -> None:
    with backend.log.transaction() as tx:
        for state in states:
            backend.webhooks.save_webhook(tx, state)


def ids(states) -> list[str]:
    return [s.webhook_id for s in states]


def delivery(
    position: int,
    *,
    webhook_id: str = "wh1",
    task_id: str | None = None,
    t: float | None = None,
    delivery_id: str | None = None,
) -> Delivery:
    """The delivery of the event at ``position`` to ``webhook_id``, due when it was made (as the
    outbox projection writes it): at ``t``, by default ``position`` seconds after T0 plus a few
    microseconds (so the times' fractions round trip too)."""
    when = at(t if t is not None else position + 0.000123)
    return Delivery(
        delivery_id=delivery_id or f"msg_{webhook_id}_{position}",
        webhook_id=webhook_id,
        owner="alice",
        task_id=task_id or f"task-{position}",
        version=1,
        position=position,
        event_type="task.created",
        url=f"https://example.com/{webhook_id}",
        created_at=when,
        next_attempt_at=when,
    )


def add(backend, *deliveries: Delivery) -> None:
    with backend.log.transaction() as tx:
        backend.webhooks.add_deliveries(tx, list(deliveries))


def lease(backend, t: float, holder: str = "h1", *, lease: float = 30, limit: int = 10) -> list:
    with backend.log.transaction() as tx:
        return backend.webhooks.lease_deliveries(tx, at(t), holder, at(t + lease), limit)


def leased_ids(backend, t: float, holder: str = "h1", **kw) -> list[str]:
    return [d.delivery_id for d in lease(backend, t, holder, **kw)]


def attempt(number: int, t: float, *, status_code: int | None = 500, **kw) -> DeliveryAttempt:
    return DeliveryAttempt(
        attempt=number, at=at(t), duration_ms=12.5, status_code=status_code, **kw
    )


def finish(
    backend,
    delivery_id: str,
    holder: str,
    tried: DeliveryAttempt,
    *,
    status: str = PENDING,
    next_attempt_at: datetime | None = None,
) -> bool:
    with backend.log.transaction() as tx:
        return backend.webhooks.finish_attempt(
            tx, delivery_id, holder, tried, status=status, next_attempt_at=next_attempt_at
        )


def deliver(backend, delivery_id: str, holder: str, t: float, number: int = 1) -> None:
    """A successful attempt by ``holder``, which holds the lease."""
    done = attempt(number, t, status_code=200)
    assert finish(backend, delivery_id, holder, done, status=DELIVERED)


# -- subscriptions --------------------------------------------------------------------------------


def test_save_webhook_then_load_webhook_gives_the_state_back(backend, other):
    state = msgspec.structs.replace(
        hook("wh1"),
        version=3,
        description="builds",
        event_types=["task.succeeded", "task.failed"],
        secret_rotated_at=at(5.5),
        previous_valid_until=at(86405.5),
    )
    save(backend, state)
    assert backend.webhooks.load_webhook("wh1") == state
    assert other.webhooks.load_webhook("wh1") == state, "committed at once"
    with backend.log.transaction() as tx:
        assert backend.webhooks.load_webhook("wh1", tx=tx) == state
    assert backend.webhooks.load_webhook("nobody") is None


def test_save_webhook_replaces_the_row(backend):
    save(backend, hook("wh1"))
    disabled = hook("wh1", status=DISABLED, version=2)
    save(backend, disabled)
    assert backend.webhooks.load_webhook("wh1") == disabled
    assert list(backend.webhooks.stored_webhooks()) == [disabled]


def test_list_webhooks_oldest_first_owners_own_or_every_one_and_never_deleted(backend):
    # ids that sort otherwise than their times
    save(
        backend,
        hook("wh-c", "alice", 0),
        hook("wh-b", "bob", 1),
        hook("wh-a", "alice", 2, status=DISABLED),
        hook("wh-z", None, 3),
        hook("wh-d", "alice", 4, status=DELETED),
    )
    assert ids(backend.webhooks.list_webhooks("alice")) == ["wh-c", "wh-a"]
    assert ids(backend.webhooks.list_webhooks("bob")) == ["wh-b"]
    assert ids(backend.webhooks.list_webhooks("carol")) == []
    assert ids(backend.webhooks.list_webhooks(None)) == ["wh-c", "wh-b", "wh-a", "wh-z"]
    with backend.log.transaction() as tx:
        assert ids(backend.webhooks.list_webhooks("alice", tx=tx)) == ["wh-c", "wh-a"]


def test_list_webhooks_made_at_the_same_time_in_id_order(backend):
    save(backend, hook("wh-b", t=0), hook("wh-a", t=0), hook("wh-C", t=0))
    # byte order, as on SQLite: upper case before lower
    assert ids(backend.webhooks.list_webhooks(None)) == ["wh-C", "wh-a", "wh-b"]


def test_listening_is_the_active_subscriptions_of_the_owner_and_of_every_owner(backend):
    save(
        backend,
        hook("wh-own", "alice", 3),
        hook("wh-all", None, 1),
        hook("wh-bob", "bob", 0),
        hook("wh-off", "alice", 2, status=DISABLED),
        hook("wh-all-off", None, 2, status=DISABLED),
        hook("wh-gone", "alice", 0, status=DELETED),
        hook("wh-all-gone", None, 0, status=DELETED),
        hook("wh-own-2", "alice", 4),
    )
    with backend.log.transaction() as tx:
        assert ids(backend.webhooks.listening(tx, "alice")) == ["wh-all", "wh-own", "wh-own-2"]
        assert ids(backend.webhooks.listening(tx, "bob")) == ["wh-bob", "wh-all"]
        assert ids(backend.webhooks.listening(tx, "carol")) == ["wh-all"]


def test_stored_webhooks_is_every_row_deleted_too_in_id_order(backend):
    states = [
        hook("wh-9", t=0),
        hook("wh-10", t=1, status=DELETED),
        hook("WH-1", None, 2, status=DISABLED),
        hook("wh-a", t=3),
    ]
    save(backend, *states)
    expected = sorted(states, key=lambda s: s.webhook_id.encode())
    assert list(backend.webhooks.stored_webhooks()) == expected
    with backend.log.transaction() as tx:
        assert list(backend.webhooks.stored_webhooks(tx=tx)) == expected


def test_clear_webhooks_empties_the_rows_and_keeps_secrets_and_deliveries(backend):
    save(backend, hook("wh1"), hook("wh2", None))
    secrets = WebhookSecrets(secret="whsec_one")
    with backend.log.transaction() as tx:
        backend.webhooks.set_secrets(tx, "wh1", secrets)
    add(backend, delivery(1))
    with backend.log.transaction() as tx:
        backend.webhooks.clear_webhooks(tx)
    assert list(backend.webhooks.stored_webhooks()) == []
    assert backend.webhooks.list_webhooks(None) == []
    assert backend.webhooks.load_webhook("wh1") is None
    assert backend.webhooks.secrets("wh1") == secrets
    assert backend.webhooks.get_delivery(delivery(1).delivery_id) == delivery(1)


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_round_trip_and_a_rotation_replaces_them(backend, other):
    assert backend.webhooks.secrets("wh1") is None
    first = WebhookSecrets(secret="whsec_first")
    with backend.log.transaction() as tx:
        backend.webhooks.set_secrets(tx, "wh1", first)
        assert backend.webhooks.secrets("wh1", tx=tx) == first
    assert backend.webhooks.secrets("wh1") == first
    rotated = WebhookSecrets(
        secret="whsec_second", previous="whsec_first", previous_until=at(86400.25)
    )
    with backend.log.transaction() as tx:
        backend.webhooks.set_secrets(tx, "wh1", rotated)
    assert backend.webhooks.secrets("wh1") == rotated
    assert other.webhooks.secrets("wh1") == rotated
    assert backend.webhooks.secrets("wh2") is None


# -- the outbox -----------------------------------------------------------------------------------


def test_add_deliveries_then_get_delivery_gives_them_back(backend, other):
    given = [delivery(1), delivery(2, webhook_id="wh2"), delivery(3, t=3.999999)]
    add(backend, *given)
    for d in given:
        assert backend.webhooks.get_delivery(d.delivery_id) == d
        assert other.webhooks.get_delivery(d.delivery_id) == d
    assert backend.webhooks.get_delivery("msg_nobody") is None
    add(backend)  # nothing to add is fine


def test_add_deliveries_leaves_a_delivery_whose_id_is_there_as_it_is(backend):
    first = delivery(1)
    add(backend, first)
    again = msgspec.structs.replace(first, url="https://example.com/other", position=9)
    add(backend, again, delivery(2))
    assert backend.webhooks.get_delivery(first.delivery_id) == first
    assert backend.webhooks.get_delivery(delivery(2).delivery_id) == delivery(2)
    assert [d.delivery_id for d in backend.webhooks.list_deliveries("wh1")] == [
        first.delivery_id,
        delivery(2).delivery_id,
    ]


def test_deliveries_of_a_transaction_that_rolls_back_are_not_kept(backend):
    with pytest.raises(RuntimeError), backend.log.transaction() as tx:
        backend.webhooks.add_deliveries(tx, [delivery(1)])
        raise RuntimeError("the command failed")
    assert backend.webhooks.get_delivery(delivery(1).delivery_id) is None
    assert backend.webhooks.next_due() is None


def test_lease_deliveries_takes_only_those_due(backend):
    add(backend, delivery(1, t=10), delivery(2, t=20), delivery(3, t=30))
    assert leased_ids(backend, 5) == []
    assert leased_ids(backend, 10) == [delivery(1).delivery_id], "due at the time itself"
    assert leased_ids(backend, 25) == [delivery(2).delivery_id]


def test_a_leased_delivery_is_given_back_as_it_is_stored(backend):
    add(backend, delivery(1))
    (leased,) = lease(backend, 5)
    assert leased == delivery(1)


def test_a_delivery_is_not_leased_again_while_its_lease_runs_and_is_once_it_lapses(backend):
    add(backend, delivery(1, t=0))
    assert leased_ids(backend, 1, "h1", lease=30) == [delivery(1).delivery_id]
    assert leased_ids(backend, 2, "h2") == []
    assert leased_ids(backend, 30.999, "h1") == []
    assert leased_ids(backend, 31, "h2") == [delivery(1).delivery_id], "the lease ended at 31"
    # the first holder's lease is gone: what it reports now is not written
    assert not finish(backend, delivery(1).delivery_id, "h1", attempt(1, 32))
    assert backend.webhooks.attempts(delivery(1).delivery_id) == []
    deliver(backend, delivery(1).delivery_id, "h2", 33)


def test_lease_deliveries_takes_at_most_limit_oldest_first(backend):
    made = [delivery(n, t=0) for n in (4, 2, 5, 1, 3)]
    add(backend, *made)
    assert leased_ids(backend, 1, limit=2) == [delivery(1).delivery_id, delivery(2).delivery_id]
    assert leased_ids(backend, 1, limit=2) == [delivery(3).delivery_id, delivery(4).delivery_id]
    assert leased_ids(backend, 1, limit=2) == [delivery(5).delivery_id]
    assert leased_ids(backend, 1, limit=2) == []


def test_a_later_delivery_of_the_same_subscription_and_task_waits_for_the_earlier(backend):
    first = delivery(1, task_id="a", t=0)
    second = delivery(2, task_id="a", t=0)
    elsewhere = delivery(3, task_id="a", webhook_id="wh2", t=0)  # another subscription
    other_task = delivery(4, task_id="b", t=0)
    add(backend, first, second, elsewhere, other_task)

    assert leased_ids(backend, 1, lease=3600) == [
        first.delivery_id,
        elsewhere.delivery_id,
        other_task.delivery_id,
    ]
    assert leased_ids(backend, 2) == [], "the first is in flight"
    # the first fails and is retried later: the second still waits
    assert finish(
        backend, first.delivery_id, "h1", attempt(1, 3), status=PENDING, next_attempt_at=at(60)
    )
    assert leased_ids(backend, 10) == []
    assert leased_ids(backend, 60) == [first.delivery_id]
    deliver(backend, first.delivery_id, "h1", 61, number=2)
    assert leased_ids(backend, 62) == [second.delivery_id]


def test_a_delivery_given_up_on_lets_the_next_one_go(backend):
    first, second = delivery(1, task_id="a", t=0), delivery(2, task_id="a", t=0)
    add(backend, first, second)
    assert leased_ids(backend, 1) == [first.delivery_id]
    assert finish(backend, first.delivery_id, "h1", attempt(8, 2), status=GAVE_UP)
    assert leased_ids(backend, 3) == [second.delivery_id]


def test_finish_attempt_records_the_attempt_and_where_the_delivery_stands(backend, other):
    d = delivery(1, t=0)
    add(backend, d)
    lease(backend, 1, "h1")
    first = attempt(1, 1.5, status_code=503, error="HTTP 503", response="try later")
    assert finish(backend, d.delivery_id, "h1", first, status=PENDING, next_attempt_at=at(6.25))
    assert backend.webhooks.get_delivery(d.delivery_id) == msgspec.structs.replace(
        d, attempts=1, next_attempt_at=at(6.25), last_status=503, last_error="HTTP 503"
    )
    assert not finish(backend, d.delivery_id, "h1", attempt(2, 2)), "the lease ended"

    lease(backend, 7, "h2")
    second = attempt(2, 7.5, status_code=None, error="connection refused")
    assert finish(backend, d.delivery_id, "h2", second, status=PENDING, next_attempt_at=at(40))
    lease(backend, 40, "h1")
    third = attempt(3, 40.000001, status_code=200, response="ok")
    assert finish(backend, d.delivery_id, "h1", third, status=DELIVERED, next_attempt_at=None)

    done = msgspec.structs.replace(
        d,
        status=DELIVERED,
        attempts=3,
        next_attempt_at=None,
        last_status=200,
        last_error=None,
        finished_at=at(40.000001),
    )
    assert backend.webhooks.get_delivery(d.delivery_id) == done
    assert other.webhooks.get_delivery(d.delivery_id) == done
    assert backend.webhooks.attempts(d.delivery_id) == [first, second, third]
    assert other.webhooks.attempts(d.delivery_id) == [first, second, third]
    assert leased_ids(backend, 100) == [], "a delivered delivery is not leased again"
    assert not finish(backend, d.delivery_id, "h1", attempt(4, 41)), "nor finished again"


def test_finish_attempt_by_a_stale_holder_writes_nothing(backend):
    d = delivery(1, t=0)
    add(backend, d)
    assert not finish(backend, d.delivery_id, "h1", attempt(1, 1)), "never leased"
    lease(backend, 1, "h1")
    assert not finish(backend, d.delivery_id, "h2", attempt(1, 2), status=DELIVERED)
    assert not finish(backend, "msg_nobody", "h1", attempt(1, 2))
    assert backend.webhooks.get_delivery(d.delivery_id) == d
    assert backend.webhooks.attempts(d.delivery_id) == []
    assert leased_ids(backend, 2, "h2") == [], "h1's lease still runs"


def test_a_delivery_given_up_on_is_finished(backend):
    d = delivery(1, t=0)
    add(backend, d)
    lease(backend, 1, "h1")
    last = attempt(8, 2, status_code=404, error="HTTP 404", response="no such hook")
    assert finish(backend, d.delivery_id, "h1", last, status=GAVE_UP)
    assert backend.webhooks.get_delivery(d.delivery_id) == msgspec.structs.replace(
        d,
        status=GAVE_UP,
        attempts=8,
        next_attempt_at=None,
        last_status=404,
        last_error="HTTP 404",
        finished_at=at(2),
    )
    assert leased_ids(backend, 1000) == []


def test_an_answer_with_a_nul_in_it_is_kept_with_u_fffd_in_its_place(backend):
    d = delivery(1, t=0)
    add(backend, d)
    lease(backend, 1, "h1")
    odd = attempt(1, 2, error="bad\x00error", response="\x00binary\x00")
    assert finish(backend, d.delivery_id, "h1", odd, status=PENDING, next_attempt_at=at(9))
    (kept,) = backend.webhooks.attempts(d.delivery_id)
    assert (kept.error, kept.response) == ("bad\ufffderror", "\ufffdbinary\ufffd")
    assert backend.webhooks.get_delivery(d.delivery_id).last_error == "bad\ufffderror"


def test_retry_delivery_makes_a_finished_delivery_pending_again(backend):
    d = delivery(1, t=0)
    add(backend, d)
    lease(backend, 1, "h1")
    assert finish(backend, d.delivery_id, "h1", attempt(8, 2), status=GAVE_UP)
    with backend.log.transaction() as tx:
        retried = backend.webhooks.retry_delivery(tx, d.delivery_id, at(100))
        assert backend.webhooks.retry_delivery(tx, "msg_nobody", at(100)) is None
    expected = msgspec.structs.replace(
        d,
        status=PENDING,
        attempts=8,
        next_attempt_at=at(100),
        last_status=500,
        finished_at=None,
    )
    assert retried == expected
    assert backend.webhooks.get_delivery(d.delivery_id) == expected
    assert leased_ids(backend, 99) == []
    assert leased_ids(backend, 100, "h2") == [d.delivery_id]
    deliver(backend, d.delivery_id, "h2", 101, number=9)
    assert [a.attempt for a in backend.webhooks.attempts(d.delivery_id)] == [8, 9]


def test_retry_delivery_of_a_delivery_in_flight_keeps_its_lease(backend):
    d = delivery(1, t=0)
    add(backend, d)
    lease(backend, 1, "h1", lease=30)
    with backend.log.transaction() as tx:
        backend.webhooks.retry_delivery(tx, d.delivery_id, at(2))
    assert leased_ids(backend, 3, "h2") == [], "not sent a second time beside the first"
    deliver(backend, d.delivery_id, "h1", 4)
    assert backend.webhooks.get_delivery(d.delivery_id).status == DELIVERED


def test_list_deliveries_pages_a_subscriptions_deliveries_by_position(backend, other):
    add(
        backend,
        delivery(7),
        delivery(3),
        delivery(2, webhook_id="wh2"),
        delivery(1),
        delivery(5),
        delivery(4, webhook_id="wh2"),
    )
    page = backend.webhooks.list_deliveries("wh1", limit=2)
    assert page == [delivery(1), delivery(3)]
    page = backend.webhooks.list_deliveries("wh1", after=page[-1].position, limit=2)
    assert page == [delivery(5), delivery(7)]
    assert backend.webhooks.list_deliveries("wh1", after=7, limit=2) == []
    assert other.webhooks.list_deliveries("wh1") == [delivery(n) for n in (1, 3, 5, 7)]
    assert backend.webhooks.list_deliveries("wh2", after=2) == [delivery(4, webhook_id="wh2")]
    assert backend.webhooks.list_deliveries("nobody") == []
    with backend.log.transaction() as tx:
        assert backend.webhooks.list_deliveries("wh1", after=4, tx=tx) == [
            delivery(5),
            delivery(7),
        ]


def test_count_failure_counts_a_run_of_failed_deliveries_that_a_success_ends(backend, other):
    with backend.log.transaction() as tx:
        assert [backend.webhooks.count_failure(tx, "wh1", True) for _ in range(3)] == [1, 2, 3]
        assert backend.webhooks.count_failure(tx, "wh2", True) == 1
    with other.log.transaction() as tx:
        assert other.webhooks.count_failure(tx, "wh1", True) == 4
        assert other.webhooks.count_failure(tx, "wh1", False) == 0
        assert other.webhooks.count_failure(tx, "wh1", False) == 0
        assert other.webhooks.count_failure(tx, "wh1", True) == 1
        assert other.webhooks.count_failure(tx, "wh2", True) == 2


def test_next_due_is_the_earliest_next_attempt_or_lease_end_of_a_pending_delivery(backend):
    assert backend.webhooks.next_due() is None
    add(backend, delivery(1, t=20.5), delivery(2, t=10.25), delivery(3, t=30))
    assert backend.webhooks.next_due() == at(10.25)
    lease(backend, 11, "h1", lease=30)  # delivery 2 until 41
    assert backend.webhooks.next_due() == at(20.5)
    lease(backend, 21, "h1", lease=5)  # delivery 1 until 26
    assert backend.webhooks.next_due() == at(26)
    deliver(backend, delivery(1).delivery_id, "h1", 22)
    assert backend.webhooks.next_due() == at(30)
    with backend.log.transaction() as tx:
        assert backend.webhooks.next_due(tx=tx) == at(30)
    lease(backend, 31, "h1", lease=100)  # delivery 3 until 131
    assert backend.webhooks.next_due() == at(41)
    deliver(backend, delivery(2).delivery_id, "h1", 32)
    deliver(backend, delivery(3).delivery_id, "h1", 33)
    assert backend.webhooks.next_due() is None


def test_next_due_leaves_out_a_delivery_waiting_behind_an_earlier_one(backend):
    first = delivery(1, task_id="a", t=0)
    second = delivery(2, task_id="a", t=1)
    add(backend, first, second)
    lease(backend, 1, "h1")
    assert finish(
        backend, first.delivery_id, "h1", attempt(1, 2), status=PENDING, next_attempt_at=at(60)
    )
    # the second is past its time, but nothing can be leased before the first is due again
    assert leased_ids(backend, 3) == []
    assert backend.webhooks.next_due() == at(60)


# -- several instances on one database ------------------------------------------------------------


def test_two_instances_never_lease_the_same_delivery(backend, other):
    add(backend, delivery(1, t=0), delivery(2, t=0))
    assert leased_ids(backend, 1, "node-1", limit=1) == [delivery(1).delivery_id]
    assert leased_ids(other, 1, "node-2") == [delivery(2).delivery_id]
    assert leased_ids(backend, 2, "node-1") == []
    assert leased_ids(other, 2, "node-2") == []


def test_two_instances_leasing_at_once_share_the_deliveries_out(backend, other):
    made = [delivery(n, t=0) for n in range(1, 41)]
    add(backend, *made)
    taken: dict[str, list[str]] = {"node-1": [], "node-2": []}
    start = threading.Barrier(2)

    def drain(instance, holder: str) -> None:
        start.wait()
        for step in itertools.count():
            got = leased_ids(instance, 1 + step / 1000, holder, lease=3600, limit=3)
            if not got:
                return
            taken[holder] += got

    threads = [
        threading.Thread(target=drain, args=(instance, holder), daemon=True)
        for instance, holder in ((backend, "node-1"), (other, "node-2"))
    ]
    for thread in threads:
        thread.start()
    within(60, lambda: [thread.join() for thread in threads])

    everything = taken["node-1"] + taken["node-2"]
    assert len(everything) == len(set(everything)), "a delivery was leased twice"
    assert sorted(everything) == sorted(d.delivery_id for d in made)


# -- backup ---------------------------------------------------------------------------------------


def test_a_backup_holds_the_webhook_tables(backends, backend):
    save(backend, hook("wh1"), hook("wh2", None, 1, status=DELETED))
    secrets = WebhookSecrets(secret="whsec_2", previous="whsec_1", previous_until=at(9))
    d1, d2 = delivery(1, t=0), delivery(2, t=0)
    add(backend, d1, d2)
    lease(backend, 1, "h1")
    tried = attempt(1, 2, error="HTTP 500", response="oops")
    with backend.log.transaction() as tx:
        backend.webhooks.set_secrets(tx, "wh1", secrets)
        backend.webhooks.finish_attempt(
            tx, d1.delivery_id, "h1", tried, status=PENDING, next_attempt_at=at(30)
        )
        backend.webhooks.count_failure(tx, "wh1", True)
    destination = backends.backup_destination()

    backend.backup(destination)

    copy = backends.open_backup(destination)
    assert list(copy.webhooks.stored_webhooks()) == list(backend.webhooks.stored_webhooks())
    assert copy.webhooks.secrets("wh1") == secrets
    assert copy.webhooks.list_deliveries("wh1") == backend.webhooks.list_deliveries("wh1")
    assert copy.webhooks.attempts(d1.delivery_id) == [tried]
    assert copy.webhooks.next_due() == backend.webhooks.next_due() == at(30)
    # d2's lease went along: it is not leased again before it ends
    assert leased_ids(copy, 2, "h2") == []
    assert leased_ids(copy, 31, "h2") == [d2.delivery_id, d1.delivery_id], "d2 due since 0"
    with copy.log.transaction() as tx:
        assert copy.webhooks.count_failure(tx, "wh1", True) == 2


def test_times_are_kept_to_the_microsecond(backend):
    when = T0.replace(microsecond=1)
    d = msgspec.structs.replace(delivery(1), created_at=when, next_attempt_at=when)
    add(backend, d)
    assert backend.webhooks.get_delivery(d.delivery_id) == d
