"""A finished task past its expires_at is gone for every route even before the sweeper has
tombstoned it: no update brings it back."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from api.composition import Store
from ledger.commands import ClaimTask, CompleteTask
from ledger.events import blob_ref
from ledger.log import Envelope
from tests.inprocess import InProcessServer


def test_an_expired_task_cannot_be_updated_cancelled_or_deleted_before_the_sweep(database):
    server = InProcessServer(database, sweep_interval=0).start()
    try:
        client = server.client(server.admin_key)
        created = client.post("/task/parse", json={"file": "aGVsbG8=", "expires_in": 1})
        task_id = created.json()["task_id"]
        store = Store(server.db)
        now = datetime.now(UTC)
        output = json.dumps(
            {"chunks": [], "file_name": None, "page_count": 1, "pdf_url": None}
        ).encode()
        env = Envelope(recorded_at=now)
        store.handler.execute(
            ClaimTask(
                task_id=task_id, at=now, worker_id="w", lease_until=now + timedelta(minutes=5)
            ),
            env,
        )
        store.handler.execute(
            CompleteTask(task_id=task_id, at=now, worker_id="w", output=blob_ref(output)),
            env,
            blobs=[output],
        )
        assert client.get(f"/task/{task_id}").status_code == 200
        time.sleep(1.5)  # past expires_at; no sweeper runs (sweep_interval=0)
        events_before = len(store.history(task_id))

        assert client.get(f"/task/{task_id}").status_code == 404
        update = client.patch(f"/task/{task_id}/parse", json={"high_resolution": False})
        assert (update.status_code, update.text) == (404, "Task not found")
        assert client.get(f"/task/{task_id}/cancel").status_code == 404
        assert client.delete(f"/task/{task_id}").status_code == 404
        assert len(store.history(task_id)) == events_before
        store.close()
    finally:
        server.stop()
