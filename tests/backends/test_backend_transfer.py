"""Backend contract: export, import (into every backend) and backup of a whole ledger.

An export is a stream of JSON-ready records (``taskledger export`` writes one JSON line each):
a header, every stored event (``kind: "event"``), every blob and blob reference, and a footer.
The tests change an export only through that much of its shape (and a blob record's ``data``,
base64), which is also what lets an export of one backend import into another."""

from __future__ import annotations

import base64
import json

import pytest
from backend_support import (
    append,
    assert_chain,
    blobs,
    claimed,
    created,
    populate,
    stored,
)

from ledger.errors import ImportRefused
from ledger.log import KeyRecord, StoredOutcome

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
