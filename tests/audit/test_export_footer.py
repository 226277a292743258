"""An export cut short is refused: the footer records how many events it holds and the last
hash, so losing trailing lines cannot pass for a whole log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from api.composition import Store
from ledger.commands import CancelTask, CreateTask
from ledger.errors import ImportRefused
from ledger.events import blob_ref
from ledger.log import Envelope


@pytest.fixture
def records(tmp_path):
    store = Store(tmp_path / "source.db")
    env = Envelope(recorded_at=datetime.now(UTC))
    for n in range(3):
        task_id, data = str(uuid.uuid4()), f"file {n}".encode()
        store.handler.execute(
            CreateTask(
                task_id=task_id,
                at=datetime.now(UTC),
                owner="o",
                configuration={},
                file=blob_ref(data),
            ),
            env,
            blobs=[data],
        )
        store.handler.execute(CancelTask(task_id=task_id, at=datetime.now(UTC)), env)
    exported = list(store.backend.export_records())
    store.close()
    return exported


def load(tmp_path, records):
    target = Store(tmp_path / f"target-{uuid.uuid4().hex}.db")
    try:
        with target.log.transaction() as tx:
            return target.backend.import_records(records, tx=tx)
    finally:
        events = target.log.last_position()
        target.close()
        load.events_left = events


def test_a_whole_export_imports(tmp_path, records):
    assert records[-1]["kind"] == "footer" and records[-1]["events"] == 6
    assert load(tmp_path, records) == 6


def test_an_export_without_its_footer_is_refused(tmp_path, records):
    with pytest.raises(ImportRefused, match="no footer"):
        load(tmp_path, records[:-1])
    assert load.events_left == 0


def test_an_export_missing_its_last_events_is_refused(tmp_path, records):
    events = [r for r in records if r["kind"] == "event"]
    cut = [r for r in records if r is not events[-1]]
    with pytest.raises(ImportRefused, match="footer says 6 events"):
        load(tmp_path, cut)
    assert load.events_left == 0
