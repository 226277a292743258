"""Backend contract: export, import (into every backend) and backup of a whole ledger.

An export is a stream of JSON-ready records (``taskledger export`` writes one JSON line each):
a header, every stored event (``kind: "event"``), every blob and blob reference, every key, the
webhooks' secrets, deliveries, attempts and failure runs, and a footer. The tests change an
export only through that much of its shape (a blob record's ``data``, base64, and a webhook
record's fields), which is also what lets an export of one backend import into another."""

from __future__ import annotations

import base64
import json

import pytest
from backend_support import (
    append,
    assert_chain,
    at,
    blobs,
    claimed,
    created,
    populate,
    stored,
)

from ledger.errors import ImportRefused
from ledger.log import (
    DELIVERED,
    GAVE_UP,
    PENDING,
    Delivery,
    DeliveryAttempt,
    KeyRecord,
    StoredOutcome,
    WebhookSecrets,
)

KEY = KeyRecord(key_id="k-alice", owner="alice", role="user", created_at="2026-01-01T12:00:00Z")
OUTCOME = StoredOutcome(fingerprint="fp", outcome=b"{}")

# -- export and import ----------------------------------------------------------------------------


def export(backend) -> list[dict]:
    """The export as ``taskledger export`` writes and ``import`` reads it: JSON lines."""
    return [json.loads(json.dumps(record)) for record in backend.export_records()]


def import_(target, records, progress=None) -> int:
    with target.log.transaction() as tx:
        return target.import_records(records, tx=tx, progress=progress)


def assert_empty(backend):
    assert backend.log.last_position() == 0
    assert stored(backend) == []
    assert blobs(backend) == []


def test_an_export_imported_into_a_new_backend_reproduces_the_log_and_blobs(
    backend, target_backends
):
    recorded = populate(backend)
    records = export(backend)
    target = target_backends.create()
    steps = []

    count = import_(target, records, progress=steps.append)

    assert count == len(recorded)
    assert sum(steps) == count
    assert stored(target) == stored(backend)
    assert target.log.read_all() == recorded
    assert blobs(target) == blobs(backend)
    assert len(blobs(target)) == 3, "the deleted task's file was purged before the export"
    assert_chain(stored(target))


def test_an_imported_log_goes_on_where_the_export_ended(backend, target_backends):
    recorded = populate(backend)
    target = target_backends.create()
    import_(target, export(backend))

    (next_event,) = append(target, "b", [claimed("b", 9)], expected=1)

    assert next_event.position > recorded[-1].position
    assert next_event.recorded_at >= recorded[-1].recorded_at
    assert_chain(stored(target))
    assert stored(target)[:-1] == stored(backend)


def test_an_empty_export_imports_as_an_empty_backend(backend, fresh):
    assert import_(fresh, export(backend)) == 0
    assert_empty(fresh)


def test_import_into_a_backend_that_holds_events_is_refused(backends, fresh):
    append(fresh, "x", [created("x", 0)])
    rows = stored(fresh)
    # An export that would import cleanly into an empty backend.
    empty = export(backends.create())
    with pytest.raises(ImportRefused):
        import_(fresh, empty)
    assert stored(fresh) == rows


def change_event_data(records):
    events = [r for r in records if r["kind"] == "event"]
    events[1]["data"] = events[1]["data"].replace('"bob"', '"mallory"')
    assert '"mallory"' in events[1]["data"]


def drop_an_event(records):
    records.remove([r for r in records if r["kind"] == "event"][2])


def drop_the_last_event(records):
    records.remove([r for r in records if r["kind"] == "event"][-1])


def cut_short(records):
    del records[-1]


def swap_two_events(records):
    index = [n for n, r in enumerate(records) if r["kind"] == "event"]
    records[index[1]], records[index[2]] = records[index[2]], records[index[1]]


def change_blob_bytes(records):
    blob = [r for r in records if r["kind"] == "blob"][0]
    blob["data"] = base64.b64encode(b"not the file").decode()


def add_records_after_the_footer(records):
    records.append(dict([r for r in records if r["kind"] == "blob"][0]))


@pytest.mark.parametrize(
    "tamper",
    [
        change_event_data,
        drop_an_event,
        drop_the_last_event,
        cut_short,
        swap_two_events,
        change_blob_bytes,
        add_records_after_the_footer,
    ],
)
def test_a_tampered_export_is_refused_and_the_target_stays_empty(backend, fresh, tamper):
    populate(backend)
    records = export(backend)
    tamper(records)
    with pytest.raises(ImportRefused):
        import_(fresh, records)
    assert_empty(fresh)
    # and the same target takes the untampered export afterwards
    assert import_(fresh, export(backend)) == len(stored(backend))


# -- webhooks: secrets, deliveries, attempts, failure runs ---------------------------------------

HOOK, DEFAULT = "wh1", "default:alice"
HOOK_SECRETS = WebhookSecrets(
    secret="whsec_bmV3LXNlY3JldA==", previous="whsec_b2xkLXNlY3JldA==", previous_until=at(86400)
)
DEFAULT_SECRETS = WebhookSecrets(secret="whsec_ZGVmYXVsdA==")
#: The deliveries populate_webhooks makes, by name.
IN_FLIGHT, SUCCEEDED, GAVE_UP_ON, RETRYING = "msg_in_flight", "msg_ok", "msg_gave_up", "msg_retry"


def delivery(delivery_id: str, webhook_id: str, position: int, task_id: str) -> Delivery:
    return Delivery(
        delivery_id=delivery_id,
        webhook_id=webhook_id,
        owner="alice",
        task_id=task_id,
        version=1,
        position=position,
        event_type="task.created",
        url=f"https://example.com/{webhook_id}",
        created_at=at(position + 0.000123),
        next_attempt_at=at(position + 0.000123),
    )


def populate_webhooks(backend) -> None:
    """Secrets of a subscription (just rotated) and of an owner's default one; four deliveries:
    one leased (an attempt in flight), one delivered, one given up on (with the receiver's
    answer, a NUL in it) and one pending its second attempt; and two runs of failures."""
    hooks = backend.webhooks
    with backend.log.transaction() as tx:
        hooks.set_secrets(tx, HOOK, HOOK_SECRETS)
        hooks.set_secrets(tx, DEFAULT, DEFAULT_SECRETS)
        hooks.add_deliveries(
            tx,
            [
                delivery(IN_FLIGHT, HOOK, 1, "a"),
                delivery(SUCCEEDED, HOOK, 2, "b"),
                delivery(GAVE_UP_ON, DEFAULT, 3, "c"),
                delivery(RETRYING, HOOK, 4, "d"),
            ],
        )
        leased = hooks.lease_deliveries(tx, at(100), "node-1", at(130), 10)
        assert len(leased) == 4
        finished = [
            (SUCCEEDED, DeliveryAttempt(attempt=1, at=at(101), duration_ms=12.5, status_code=204)),
            (
                GAVE_UP_ON,
                DeliveryAttempt(
                    attempt=1,
                    at=at(101.25),
                    duration_ms=3.0,
                    status_code=410,
                    error="HTTP 410",
                    response='{"gone": "for \u00e9ver\x00"}',
                ),
            ),
            (
                RETRYING,
                DeliveryAttempt(
                    attempt=1, at=at(101.5), duration_ms=10000.0, error="connection refused"
                ),
            ),
        ]
        for delivery_id, attempt in finished:
            status = {SUCCEEDED: DELIVERED, GAVE_UP_ON: GAVE_UP}.get(delivery_id, PENDING)
            due = at(160) if status == PENDING else None
            assert hooks.finish_attempt(
                tx, delivery_id, "node-1", attempt, status=status, next_attempt_at=due
            )
        hooks.count_failure(tx, DEFAULT, True)
        hooks.count_failure(tx, DEFAULT, True)
        hooks.count_failure(tx, HOOK, True)


def webhook_records(backend) -> dict:
    """What the WebhookStore says of the subscriptions populate_webhooks made."""
    hooks = backend.webhooks
    deliveries = {w: hooks.list_deliveries(w) for w in (HOOK, DEFAULT)}
    return {
        "secrets": {w: hooks.secrets(w) for w in (HOOK, DEFAULT)},
        "deliveries": deliveries,
        "attempts": {
            d.delivery_id: hooks.attempts(d.delivery_id) for ds in deliveries.values() for d in ds
        },
    }


def failure_runs(backend) -> dict[str, int]:
    """Each subscription's run of failures (read by counting one more, rolled back)."""

    class Rollback(Exception):
        pass

    runs = {}
    try:
        with backend.log.transaction() as tx:
            for webhook_id in (HOOK, DEFAULT):
                runs[webhook_id] = backend.webhooks.count_failure(tx, webhook_id, True) - 1
            raise Rollback
    except Rollback:
        pass
    return runs


def test_webhook_secrets_deliveries_attempts_and_failure_runs_survive_export_and_import(
    backend, target_backends
):
    populate(backend)
    populate_webhooks(backend)
    records = export(backend)
    target = target_backends.create()

    import_(target, records)

    assert webhook_records(target) == webhook_records(backend)
    assert webhook_records(target)["secrets"] == {HOOK: HOOK_SECRETS, DEFAULT: DEFAULT_SECRETS}
    assert [len(a) for a in webhook_records(target)["attempts"].values()] == [0, 1, 1, 1]
    assert failure_runs(target) == failure_runs(backend) == {HOOK: 1, DEFAULT: 2}
    # The export of the import is the same export (nothing lost, nothing changed).
    assert export(target) == records


def test_an_imported_pending_delivery_is_not_leased(backend, target_backends):
    populate_webhooks(backend)
    target = target_backends.create()
    import_(target, export(backend))

    with backend.log.transaction() as tx:  # the in-flight one is leased until 130 there
        assert backend.webhooks.lease_deliveries(tx, at(110), "node-2", at(140), 10) == []
    with target.log.transaction() as tx:
        (leased,) = target.webhooks.lease_deliveries(tx, at(110), "node-2", at(300), 10)
        assert leased == backend.webhooks.get_delivery(IN_FLIGHT)
        # The one waiting for its second attempt is due when it was.
        assert target.webhooks.lease_deliveries(tx, at(159), "node-2", at(190), 10) == []
        (retried,) = target.webhooks.lease_deliveries(tx, at(160), "node-2", at(190), 10)
        assert retried.delivery_id == RETRYING
        assert target.webhooks.finish_attempt(
            tx,
            RETRYING,
            "node-2",
            DeliveryAttempt(attempt=2, at=at(160.5), duration_ms=8.0, status_code=200),
            status=DELIVERED,
            next_attempt_at=None,
        )
    assert [a.attempt for a in target.webhooks.attempts(RETRYING)] == [1, 2]


@pytest.mark.parametrize("version", [1, 2])
def test_an_export_of_an_earlier_version_still_imports(backend, fresh, version):
    recorded = populate(backend)
    backend.records.add_key(KEY, "hash-of-alice")
    populate_webhooks(backend)
    kept = ["header", "event", "blob", "blob_ref", "footer"] + (["key"] if version == 2 else [])
    records = [r for r in export(backend) if r["kind"] in kept]
    records[0]["version"] = version

    assert import_(fresh, records) == len(recorded)

    assert stored(fresh) == stored(backend)
    assert fresh.records.find_key(KEY.key_id) == ((KEY, "hash-of-alice") if version == 2 else None)
    assert fresh.webhooks.secrets(HOOK) is None
    assert fresh.webhooks.list_deliveries(HOOK) == []


def first(records, kind):
    return next(r for r in records if r["kind"] == kind)


def drop_delivery_id(records):
    del first(records, "delivery")["delivery_id"]
    return "a delivery record needs 'delivery_id'"


def unknown_status(records):
    first(records, "delivery")["status"] = "sent"
    return "a delivery record's 'status' must be one of pending, succeeded, failed, not 'sent'"


def pending_with_no_time(records):
    next(r for r in records if r.get("status") == PENDING)["next_attempt_at"] = None
    return "a pending delivery record needs 'next_attempt_at'"


def time_without_offset(records):
    first(records, "delivery")["created_at"] = "2026-01-01T12:00:00"
    return "a delivery record's 'created_at' is not a time with its offset"


def position_as_text(records):
    first(records, "delivery")["position"] = "1"
    return "a delivery record's 'position' must be a whole number of at least 1, not '1'"


def secret_missing(records):
    first(records, "webhook_secret")["secret"] = ""
    return "a webhook_secret record needs 'secret'"


def negative_duration(records):
    first(records, "delivery_attempt")["duration_ms"] = -1
    return "a delivery_attempt record's 'duration_ms' must be a number of at least 0"


def empty_run(records):
    first(records, "webhook_health")["consecutive_failures"] = 0
    return "a webhook_health record's 'consecutive_failures' must be a whole number of at least 1"


def delivery_twice(records):
    index = records.index(first(records, "delivery"))
    records.insert(index + 1, dict(records[index]))
    return "already has a delivery with id"


@pytest.mark.parametrize(
    "tamper",
    [
        drop_delivery_id,
        unknown_status,
        pending_with_no_time,
        time_without_offset,
        position_as_text,
        secret_missing,
        negative_duration,
        empty_run,
        delivery_twice,
    ],
)
def test_a_malformed_webhook_record_is_refused_and_nothing_is_written(backend, fresh, tamper):
    populate(backend)
    populate_webhooks(backend)
    records = export(backend)
    message = tamper(records)

    with pytest.raises(ImportRefused) as refused:
        import_(fresh, records)

    assert message in refused.value.message
    assert_empty(fresh)
    assert fresh.webhooks.secrets(HOOK) is None
    assert fresh.webhooks.list_deliveries(HOOK) == []
    assert fresh.webhooks.attempts(SUCCEEDED) == []


def test_a_refusal_names_the_line_of_the_malformed_record(backend, fresh):
    populate_webhooks(backend)
    records = export(backend)
    line = records.index(first(records, "delivery")) + 1
    drop_delivery_id(records)
    with pytest.raises(ImportRefused) as refused:
        import_(fresh, records)
    assert refused.value.message == f"Line {line}: a delivery record needs 'delivery_id'"


# -- backup ---------------------------------------------------------------------------------------


def test_a_backup_opens_as_a_backend_with_the_same_ledger(backends, backend):
    recorded = populate(backend)
    backend.records.add_key(KEY, "hash-of-alice")
    with backend.log.transaction() as tx:
        backend.records.record_outcome(tx, "k-alice", "idem-1", OUTCOME, "2026-01-01T12:00:00Z")
    destination = backends.backup_destination()

    backend.backup(destination)
    append(backend, "later", [created("later", 9)])  # after the backup: not in the copy

    copy = backends.open_backup(destination)
    assert copy.log.read_all() == recorded
    assert stored(copy) == stored(backend)[:-1]
    assert blobs(copy) == blobs(backend)
    assert list(copy.views.stored_states()) == list(backend.views.stored_states())
    assert copy.records.find_key("k-alice") == (KEY, "hash-of-alice")
    assert copy.records.find_outcome("k-alice", "idem-1") == OUTCOME
    assert_chain(stored(copy))


def test_a_backup_leaves_out_what_another_instance_has_not_committed(backends, backend, other):
    recorded = populate(backend)
    destination = backends.backup_destination()
    with other.log.transaction() as tx:
        append(other, "pending", [created("pending", 9)], tx=tx)
        backend.backup(destination)
    copy = backends.open_backup(destination)
    assert copy.log.read_all() == recorded
    assert len(backend.log.read_all()) == len(recorded) + 1
