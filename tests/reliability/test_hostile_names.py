"""Issue 14, item 12: names a caller gives are refused when they could mislead a person reading
them. A file name that is empty, ``.`` or ``..``, or holds a right-to-left override, a zero-width
or other format character or a control character; a worker id holding the same. Each is 400
with the reason, and nothing is recorded."""

from __future__ import annotations

import sqlite3

import pytest

from tests.inprocess import add_key

BAD_NAMES = [
    ("", "must not be empty"),
    ("   ", "must not be empty"),
    (".", "not . or .."),
    ("..", "not . or .."),
    ("invoice\u202etxt.exe", "U+202E"),
    ("a\u2066b", "U+2066"),
    ("zero\u200bwidth.pdf", "U+200B"),
    ("bom\ufeff.pdf", "U+FEFF"),
    ("c1\x85control", "U+0085"),
    ("tab\there", "U+0009"),
    ("tag\U000e0041.pdf", "U+E0041"),
]
BAD_WORKERS = ["w\u202e1", "w\u200b", "w\x85", "\u2060", "w\ufeff"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from tests.inprocess import InProcessServer

    server = InProcessServer(tmp_path_factory.mktemp("names") / "ledger.db", sweep_interval=0)
    server.start()
    user = server.client(add_key(server.db, "alice"))
    worker = server.client(add_key(server.db, "pool", "worker"))
    yield server, user, worker
    user.close()
    worker.close()
    server.stop()


def events(db) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM events").fetchone()[0]


@pytest.mark.parametrize(("name", "reason"), BAD_NAMES)
def test_a_misleading_file_name_is_refused(api, name, reason):
    server, user, _ = api
    before = events(server.db)
    response = user.post("/task/parse", json={"file": "aGk=", "file_name": name})
    assert response.status_code == 400, response.text
    assert response.text.startswith("file_name must") and reason in response.text
    assert events(server.db) == before


def test_ordinary_names_in_any_script_are_kept(api):
    _, user, _ = api
    for name in ("Rechnung März.pdf", "報告書.docx", "تقرير.pdf", "a.b.c", ".hidden"):
        response = user.post("/task/parse", json={"file": "aGk=", "file_name": name})
        assert response.status_code == 200, response.text
        assert response.json()["output"]["file_name"] == name


@pytest.mark.parametrize("worker_id", BAD_WORKERS)
def test_a_worker_id_with_invisible_characters_is_refused(api, worker_id):
    server, user, worker = api
    user.post("/task/parse", json={"file": "aGk="})
    before = events(server.db)
    response = worker.post("/worker/claim", json={"worker_id": worker_id})
    assert response.status_code == 400, response.text
    assert "worker_id must not contain" in response.text
    assert events(server.db) == before
