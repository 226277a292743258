"""Moving a SQLite ledger to PostgreSQL with the two documented commands:

    taskledger export --db old.db | taskledger import --db postgresql://...

then ``verify`` passes on the result, which holds the same events (same hashes), blobs, task
states and keys; served from PostgreSQL, the old keys read the same tasks. A subscription made
on SQLite (and an owner's default secret, for a task's own ``webhook_url``) keeps its secret,
and the deliveries still pending at the move are sent from PostgreSQL, signed so that the
original secrets verify them."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from api.composition import Store
from ledger.log import DELIVERED, PENDING
from tests.api.conftest import Ledger
from tests.inprocess import InProcessServer, add_key
from tests.pg import SESSION, needs_postgres
from tests.support import wait_for
from tests.webhooks.receiver import Receiver

pytestmark = needs_postgres

ROOT = Path(__file__).resolve().parents[2]
TASKLEDGER = f"{shlex.quote(sys.executable)} -m scripts.cli"


def shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


@pytest.fixture
def url():
    made = SESSION.new_ledger_url()
    yield made
    SESSION.drop_schema(made)


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def server_story(tmp_path, receiver):
    """A SQLite ledger with a little of everything: created, claimed and succeeded, cancelled,
    deleted (its blobs purged), two keys, and alice's webhooks: a subscription to every event
    and a task's own ``webhook_url`` (signed with her default secret). Its server sends no
    webhook (no dispatcher), so every delivery is still pending when the ledger moves. Returns
    the file, the keys, and the subscription's id and secret and alice's default secret."""
    db = tmp_path / "old.db"
    keys = {"alice": add_key(db, "alice"), "admin": add_key(db, "admin", "admin")}
    hooks: dict[str, str] = {}
    with (
        InProcessServer(db, webhook_concurrency=0, allow_private_webhooks=True) as server,
        server.client(keys["alice"]) as alice,
    ):
        subscribed = alice.post("/webhooks", json={"url": receiver.url + "/hook"})
        assert subscribed.status_code == 201, subscribed.text
        hooks["id"], hooks["secret"] = subscribed.json()["id"], subscribed.json()["secret"]
        default = alice.get("/webhooks/default")
        assert default.status_code == 200, default.text
        hooks["default"] = default.json()["secret"]
        ledger = Ledger(db)
        try:
            made = []
            for name in ("done", "cancelled", "deleted", "queued"):
                own = {"webhook_url": receiver.url + "/own"} if name == "done" else {}
                response = alice.post(
                    "/task/parse", json={"file": "aGVsbG8=", "file_name": f"{name}.txt", **own}
                )
                assert response.status_code == 200, response.text
                made.append(response.json()["task_id"])
            done, cancelled, deleted, _queued = made
            ledger.succeed(done)
            ledger.succeed(deleted)
            assert alice.get(f"/task/{cancelled}/cancel").status_code == 200
            assert alice.delete(f"/task/{deleted}").status_code == 200
        finally:
            ledger.close()
    return db, keys, hooks


def test_export_piped_into_import_moves_a_sqlite_ledger_to_postgresql(server_story, url):
    db, keys, _ = server_story

    moved = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert moved.returncode == 0, moved.stderr
    verified = shell(f"{TASKLEDGER} verify --db {shlex.quote(url)}")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert "hash chain intact" in verified.stdout + verified.stderr

    old, new = Store(db), Store(url)
    try:
        assert list(new.log.iter_stored()) == list(old.log.iter_stored())
        assert sorted(new.log.iter_blobs()) == sorted(old.log.iter_blobs())
        assert list(new.views.stored_states()) == list(old.views.stored_states())
        assert new.views.queue_entries() == old.views.queue_entries()
        assert sorted(new.records.list_keys(), key=lambda k: k.key_id) == sorted(
            old.records.list_keys(), key=lambda k: k.key_id
        )
        assert new.records.find_key(keys["alice"].split("_")[1]) == old.records.find_key(
            keys["alice"].split("_")[1]
        )
    finally:
        old.close()
        new.close()


def test_webhooks_made_on_sqlite_are_sent_from_postgresql_signed_with_their_secrets(
    server_story, url, receiver
):
    db, _, hooks = server_story
    default_id = "default:alice"
    moved = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert moved.returncode == 0, moved.stderr

    old, new = Store(db), Store(url)
    try:
        for webhook_id in (hooks["id"], default_id):
            assert new.webhooks.secrets(webhook_id) == old.webhooks.secrets(webhook_id)
        assert new.webhooks.secrets(hooks["id"]).secret == hooks["secret"]
        assert new.webhooks.secrets(default_id).secret == hooks["default"]
        pending = {
            webhook_id: old.webhooks.list_deliveries(webhook_id)
            for webhook_id in (hooks["id"], default_id)
        }
        for webhook_id, deliveries in pending.items():
            assert deliveries and {d.status for d in deliveries} == {PENDING}
            assert new.webhooks.list_deliveries(webhook_id) == deliveries
    finally:
        old.close()
        new.close()
    sent = {d.delivery_id: webhook_id for webhook_id, ds in pending.items() for d in ds}
    secrets = {hooks["id"]: hooks["secret"], default_id: hooks["default"]}

    # Served from PostgreSQL, every delivery pending at the move reaches the receiver, signed
    # so that the subscription's original secret (or alice's default one) verifies it.
    with InProcessServer(url, allow_private_webhooks=True):
        wait_for(
            lambda: {r.webhook_id for r in receiver.received} >= set(sent),
            timeout=60,
            what="the deliveries pending at the move",
        )
        store = Store(url)
        try:
            wait_for(
                lambda: all(
                    d.status == DELIVERED
                    for webhook_id in secrets
                    for d in store.webhooks.list_deliveries(webhook_id)
                ),
                timeout=30,
                what="the deliveries recorded as delivered",
            )
        finally:
            store.close()
    for got in receiver.received:
        webhook_id = sent[got.webhook_id]
        assert got.path == ("/own" if webhook_id == default_id else "/hook")
        Webhook(secrets[webhook_id]).verify(got.body, got.headers)


def test_import_refuses_a_postgresql_ledger_that_already_has_events(server_story, url):
    db, _, _ = server_story
    first = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert first.returncode == 0, first.stderr
    store = Store(url)
    before = store.log.last_position()
    store.close()

    again = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )

    assert again.returncode != 0
    assert "already holds events" in again.stderr
    store = Store(url)
    try:
        assert store.log.last_position() == before
    finally:
        store.close()


def test_a_backup_of_a_postgresql_ledger_is_a_sqlite_file_that_verifies(
    server_story, url, tmp_path
):
    db, _, _ = server_story
    moved = shell(
        f"{TASKLEDGER} export --db {shlex.quote(str(db))}"
        f" | {TASKLEDGER} import --db {shlex.quote(url)}"
    )
    assert moved.returncode == 0, moved.stderr
    copy = tmp_path / "copy.db"

    backed_up = shell(f"{TASKLEDGER} backup --db {shlex.quote(url)} {shlex.quote(str(copy))}")

    assert backed_up.returncode == 0, backed_up.stderr
    verified = shell(f"{TASKLEDGER} verify --db {shlex.quote(str(copy))}")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    old, new = Store(db), Store(copy)
    try:
        assert list(new.log.iter_stored()) == list(old.log.iter_stored())
        assert list(new.views.stored_states()) == list(old.views.stored_states())
    finally:
        old.close()
        new.close()
