"""Records contract: API keys (stored by hash) and idempotency outcomes."""

from __future__ import annotations

import pytest
from backend_support import append, created

from ledger.errors import DuplicateRecord
from ledger.log import KeyRecord, StoredOutcome

ALICE = KeyRecord(key_id="k-alice", owner="alice", role="user", created_at="2026-01-01T12:00:00Z")
WORKER = KeyRecord(key_id="k-pool", owner="pool", role="worker", created_at="2026-01-01T12:00:01Z")
ADMIN = KeyRecord(key_id="k-zed", owner="ops", role="admin", created_at="2026-01-01T11:00:00Z")


# -- keys -----------------------------------------------------------------------------------------


def test_no_keys_at_first(backend):
    assert backend.records.count_keys() == 0
    assert backend.records.list_keys() == []
    assert backend.records.find_key("k-alice") is None


def test_add_key_then_find_key_gives_the_record_and_its_hash(backend, other):
    backend.records.add_key(ALICE, "hash-of-alice")
    backend.records.add_key(WORKER, "hash-of-pool")
    assert backend.records.find_key("k-alice") == (ALICE, "hash-of-alice")
    assert backend.records.find_key("k-pool") == (WORKER, "hash-of-pool")
    assert backend.records.find_key("k-nobody") is None
    assert other.records.find_key("k-alice") == (ALICE, "hash-of-alice"), "committed at once"


def test_list_keys_oldest_first_and_count_keys(backend):
    # ids that sort otherwise: k-alice, k-pool, k-zed
    for record in (ALICE, WORKER, ADMIN):
        backend.records.add_key(record, f"hash-{record.key_id}")
    assert backend.records.list_keys() == [ADMIN, ALICE, WORKER]
    assert backend.records.count_keys() == 3


def test_a_second_key_with_the_same_id_is_refused_and_the_first_is_kept(backend):
    backend.records.add_key(ALICE, "hash-of-alice")
    impostor = KeyRecord(key_id="k-alice", owner="mallory", role="admin", created_at="2026")
    with pytest.raises(DuplicateRecord):
        backend.records.add_key(impostor, "hash-of-mallory")
    assert backend.records.find_key("k-alice") == (ALICE, "hash-of-alice")
    assert backend.records.count_keys() == 1


def test_revoke_key_once(backend, other):
    backend.records.add_key(ALICE, "hash-of-alice")
    backend.records.add_key(WORKER, "hash-of-pool")

    assert backend.records.revoke_key("k-alice", "2026-02-01T00:00:00Z") is True
    assert backend.records.revoke_key("k-alice", "2026-03-01T00:00:00Z") is False
    assert backend.records.revoke_key("k-nobody", "2026-03-01T00:00:00Z") is False

    revoked = KeyRecord(
        key_id="k-alice",
        owner="alice",
        role="user",
        created_at=ALICE.created_at,
        revoked_at="2026-02-01T00:00:00Z",
    )
    assert backend.records.find_key("k-alice") == (revoked, "hash-of-alice")
    assert other.records.find_key("k-alice") == (revoked, "hash-of-alice")
    assert backend.records.find_key("k-pool") == (WORKER, "hash-of-pool")
    assert backend.records.list_keys() == [revoked, WORKER]
    assert backend.records.count_keys() == 2, "a revoked key is still counted"


# -- idempotency outcomes -------------------------------------------------------------------------

OUTCOME = StoredOutcome(fingerprint="sha256:abc", outcome=b'{"status": 202, "body": "\xc3\xa9"}')


@pytest.mark.parametrize(
    "outcome",
    [
        OUTCOME,
        StoredOutcome(fingerprint="", outcome=b""),
        StoredOutcome(fingerprint="fp", outcome=bytes(range(256)) * 40),
    ],
    ids=["json", "empty", "binary"],
)
def test_record_outcome_then_find_outcome(backend, other, outcome):
    with backend.log.transaction() as tx:
        backend.records.record_outcome(tx, "k1", "idem-1", outcome, "2026-01-01T12:00:00Z")
        assert backend.records.find_outcome("k1", "idem-1", tx=tx) == outcome
    assert backend.records.find_outcome("k1", "idem-1") == outcome
    assert other.records.find_outcome("k1", "idem-1") == outcome


@pytest.mark.parametrize(
    ("key_id", "idempotency_key"), [("k2", "idem-1"), ("k1", "idem-2"), ("k1", "IDEM-1")]
)
def test_an_outcome_belongs_to_one_key_and_one_idempotency_key(backend, key_id, idempotency_key):
    with backend.log.transaction() as tx:
        backend.records.record_outcome(tx, "k1", "idem-1", OUTCOME, "2026-01-01T12:00:00Z")
    assert backend.records.find_outcome(key_id, idempotency_key) is None
    with backend.log.transaction() as tx:
        other = StoredOutcome(fingerprint="fp-other", outcome=b"other")
        backend.records.record_outcome(tx, key_id, idempotency_key, other, "2026-01-01T12:00:01Z")
    assert backend.records.find_outcome(key_id, idempotency_key) == other
    assert backend.records.find_outcome("k1", "idem-1") == OUTCOME


def test_a_second_outcome_for_the_same_keys_is_a_duplicate_record(backend, other):
    with backend.log.transaction() as tx:
        backend.records.record_outcome(tx, "k1", "idem-1", OUTCOME, "2026-01-01T12:00:00Z")
    second = StoredOutcome(fingerprint="sha256:def", outcome=b"second")
    for instance in (backend, other):
        with pytest.raises(DuplicateRecord):
            with instance.log.transaction() as tx:
                instance.records.record_outcome(tx, "k1", "idem-1", second, "2026-01-01T12:00:05Z")
    assert backend.records.find_outcome("k1", "idem-1") == OUTCOME


def test_an_outcome_written_in_a_rolled_back_transaction_is_not_there(backend):
    with pytest.raises(RuntimeError):
        with backend.log.transaction() as tx:
            append(backend, "a", [created("a", 0)], tx=tx)
            backend.records.record_outcome(tx, "k1", "idem-1", OUTCOME, "2026-01-01T12:00:00Z")
            raise RuntimeError("the command failed after all")
    assert backend.records.find_outcome("k1", "idem-1") is None
    with backend.log.transaction() as tx:  # and the keys are free again
        backend.records.record_outcome(tx, "k1", "idem-1", OUTCOME, "2026-01-01T12:00:00Z")
    assert backend.records.find_outcome("k1", "idem-1") == OUTCOME


# -- the secret that signs file links -------------------------------------------------------------


def test_the_url_secret_is_made_on_first_use_and_then_kept(backend, other):
    secret = backend.records.url_secret()
    assert isinstance(secret, bytes) and len(secret) == 32
    assert backend.records.url_secret() == secret
    assert other.records.url_secret() == secret, "every instance reads the one stored secret"


def test_two_instances_asking_first_get_the_same_secret(backend, other):
    import threading

    found: list[bytes] = []
    start = threading.Barrier(2)

    def ask(instance) -> None:
        start.wait()
        found.append(instance.records.url_secret())

    threads = [threading.Thread(target=ask, args=(b,)) for b in (backend, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(found) == 2 and found[0] == found[1]


def test_rotating_the_url_secret_replaces_it_for_every_instance(backend, other):
    first = backend.records.url_secret()
    rotated = other.records.rotate_url_secret()
    assert len(rotated) == 32 and rotated != first
    assert backend.records.url_secret() == rotated, "committed at once, seen by another instance"
    assert other.records.url_secret() == rotated
    again = backend.records.rotate_url_secret()
    assert again not in (first, rotated)
    assert other.records.url_secret() == again


def test_rotating_before_first_use_makes_the_secret(backend):
    rotated = backend.records.rotate_url_secret()
    assert backend.records.url_secret() == rotated


def test_the_url_secret_is_in_a_backup(backends, backend):
    secret = backend.records.url_secret()
    destination = backends.backup_destination()
    backend.backup(destination)
    assert backends.open_backup(destination).records.url_secret() == secret
