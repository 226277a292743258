"""Signed file links (Chunkr's presigned ``input_file_url`` and ``pdf_url``), ``base64_urls``, and
links a forged Host header cannot plant: over real HTTP against ``taskledger serve`` (the links
are for browsers and third parties with no key), with the clock-bound cases in process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner

from api.links import Hosts, UrlSigner, default_allowed_hosts, expiry, parse_host
from scripts.cli import cli
from tests.inprocess import InProcessServer, add_key
from tests.pg import drop_database, execute, new_database
from tests.server import Server
from tests.support import wait_for

PDF_BYTES = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"
TEXT_BYTES = b"plain words\n"


@pytest.fixture(scope="module")
def server(real_server):
    """The links are for clients with no key, over the network: a real server, with the
    default allowed hosts (its bind address, 127.0.0.1:<port>, and localhost:<port>)."""
    return real_server


def make(client: httpx.Client, data: bytes, name: str, **fields: Any) -> dict[str, Any]:
    body = {"file": base64.b64encode(data).decode(), "file_name": name, **fields}
    response = client.post("/task/parse", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def fetch(url: str, **kwargs: Any) -> httpx.Response:
    """A GET with no key at all, as a browser following the link would send it."""
    return httpx.get(url, timeout=30, **kwargs)


def link_of(task: dict[str, Any]) -> str:
    return task["configuration"]["input_file_url"]


def assert_refused(response: httpx.Response, words: str) -> None:
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("text/plain")
    assert words in response.text


def one_byte_changed(text: str, index: int) -> str:
    """``text`` with the character at ``index`` replaced by another of the same kind."""
    char = text[index]
    other = {"0": "1", "a": "b", "f": "e", "9": "8"}.get(char, "0" if char != "0" else "1")
    return text[:index] + other + text[index + 1 :]


# -- the signed link over real HTTP -----------------------------------------------------------


def test_input_file_url_is_a_signed_link_fetched_with_no_key(server, alice):
    task = make(alice, PDF_BYTES, "scan 1.pdf")
    url = link_of(task)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == server.url
    assert parts.path == f"/api/v1/files/{task['task_id']}/input"
    query = parse_qs(parts.query)
    assert set(query) == {"expires", "signature"}
    expires = int(query["expires"][0])
    assert 3600 <= expires - time.time() <= 3600 + 300 + 5, "an hour, rounded up to 5 minutes"
    response = fetch(url)
    assert response.status_code == 200, response.text
    assert response.content == PDF_BYTES
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"].startswith('attachment; filename="scan 1.pdf"')
    assert response.headers["x-content-type-options"] == "nosniff"


def test_an_unknown_type_is_served_as_octet_stream(server, alice):
    task = make(alice, TEXT_BYTES, "notes.txt")
    response = fetch(link_of(task))
    assert (response.status_code, response.content) == (200, TEXT_BYTES)
    assert response.headers["content-type"] == "application/octet-stream"


def test_the_same_answer_twice_carries_the_same_link(server, alice):
    task = make(alice, TEXT_BYTES, "same.txt")
    again = alice.get(f"/task/{task['task_id']}").json()
    first, second = link_of(task), link_of(again)
    if first != second:
        # Only if the two answers fell on either side of a step (a tenth of the 1 h TTL, at
        # most 5 minutes): the later link is then exactly one step later.
        expires = [int(parse_qs(urlsplit(link).query)["expires"][0]) for link in (first, second)]
        assert expires[1] - expires[0] == 300, (first, second)
        assert first.split("?")[0] == second.split("?")[0]


@pytest.mark.parametrize("part", ["signature", "expires", "task id"])
def test_a_link_with_any_byte_changed_is_403(server, alice, part):
    task = make(alice, TEXT_BYTES, "tamper.txt")
    url = link_of(task)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    for index in (0, -1, 7):
        if part == "signature":
            changed = {**query, "signature": one_byte_changed(query["signature"], index)}
            target = f"{server.url}{path}"
        elif part == "expires":
            changed = {**query, "expires": one_byte_changed(query["expires"], index)}
            target = f"{server.url}{path}"
        else:
            task_id = task["task_id"]
            other = one_byte_changed(task_id, index)
            changed, target = query, f"{server.url}{path.replace(task_id, other)}"
        assert_refused(fetch(target, params=changed), "Invalid link")
    assert fetch(url).status_code == 200, "the link itself still works"


def test_a_link_with_parts_missing_or_malformed_is_403(server, alice):
    task = make(alice, TEXT_BYTES, "parts.txt")
    parts = urlsplit(link_of(task))
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{server.url}{parts.path}"
    for params in (
        {},
        {"expires": query["expires"]},
        {"signature": query["signature"]},
        {**query, "signature": query["signature"].upper()},
        {**query, "signature": query["signature"][:-1]},
        {**query, "expires": f"0{query['expires']}"},
        {**query, "expires": f"{query['expires']}.0"},
        {**query, "expires": "-1"},
    ):
        assert_refused(fetch(base, params=params), "Invalid link")


def test_the_link_needs_no_key_but_ignores_a_bad_one(server, alice):
    task = make(alice, TEXT_BYTES, "keyed.txt")
    response = fetch(link_of(task), headers={"Authorization": "tlk_nothing_at_all"})
    assert (response.status_code, response.content) == (200, TEXT_BYTES)


def test_a_deleted_task_link_is_404(server, alice):
    task = make(alice, TEXT_BYTES, "deleted.txt")
    url = link_of(task)
    assert alice.get(f"/task/{task['task_id']}/cancel").status_code == 200
    assert fetch(url).status_code == 200, "a cancelled task is still there"
    assert alice.delete(f"/task/{task['task_id']}").status_code == 200
    response = fetch(url)
    assert (response.status_code, response.text) == (404, "Task not found")


def test_the_authenticated_worker_route_is_unchanged(server, alice, user_keys):
    task = make(alice, TEXT_BYTES, "worker.txt")
    with server.client(user_keys["worker"]) as worker:
        # The oldest claimable task of this module's server: whichever it is.
        claimed = worker.post("/worker/claim", json={"worker_id": "w-links"}).json()
        # A worker may read an input only while it processes it, and a link outlives that:
        # its answers carry the authenticated route.
        assert link_of(claimed) == f"{claimed['task_url']}/input"
        response = worker.get(link_of(claimed))
        assert response.status_code == 200
        assert fetch(link_of(claimed)).status_code == 401, "the route still needs a key"
        released = worker.post(f"/task/{claimed['task_id']}/release", json={"worker_id": "w-links"})
        assert released.status_code == 200
        assert link_of(released.json()) == f"{claimed['task_url']}/input"
        got = worker.get(f"/task/{task['task_id']}").json()
        assert link_of(got) == f"{task['task_url']}/input"


# -- pdf_url ----------------------------------------------------------------------------------


def test_pdf_url_is_the_input_for_a_pdf_after_success(server, alice, ledger):
    task = make(alice, PDF_BYTES, "paper.pdf")
    assert alice.get(f"/task/{task['task_id']}").json()["output"]["pdf_url"] is None
    ledger.succeed(task["task_id"], file_name="paper.pdf")
    got = alice.get(f"/task/{task['task_id']}").json()
    pdf_url = got["output"]["pdf_url"]
    assert pdf_url is not None and pdf_url == link_of(got)
    response = fetch(pdf_url)
    assert (response.status_code, response.content) == (200, PDF_BYTES)
    assert response.headers["content-type"] == "application/pdf"
    listed = alice.get("/tasks", params={"limit": 50}).json()
    (mine,) = [t for t in listed if t["task_id"] == task["task_id"]]
    assert mine["output"]["pdf_url"] == pdf_url


def test_pdf_url_is_null_for_a_text_input(server, alice, ledger):
    task = make(alice, TEXT_BYTES, "words.txt")
    ledger.succeed(task["task_id"], file_name="words.txt")
    got = alice.get(f"/task/{task['task_id']}").json()
    assert got["status"] == "Succeeded"
    assert got["output"]["pdf_url"] is None
    assert fetch(link_of(got)).content == TEXT_BYTES


# -- base64_urls ------------------------------------------------------------------------------


def decode_data_url(url: str) -> tuple[str, bytes]:
    assert url.startswith("data:"), url[:40]
    header, _, payload = url.partition(",")
    assert header.endswith(";base64")
    return header[5:].removesuffix(";base64"), base64.b64decode(payload, validate=True)


def test_base64_urls_answers_data_urls_of_the_input(server, alice, ledger):
    pdf = make(alice, PDF_BYTES, "inline.pdf")
    ledger.succeed(pdf["task_id"], file_name="inline.pdf")
    text = make(alice, TEXT_BYTES, "inline.txt")
    got = alice.get(f"/task/{pdf['task_id']}", params={"base64_urls": "true"}).json()
    assert decode_data_url(link_of(got)) == ("application/pdf", PDF_BYTES)
    assert decode_data_url(got["output"]["pdf_url"]) == ("application/pdf", PDF_BYTES)
    got = alice.get(f"/task/{text['task_id']}", params={"base64_urls": "true"}).json()
    assert decode_data_url(link_of(got)) == ("application/octet-stream", TEXT_BYTES)
    # And in the list.
    listed = alice.get("/tasks", params={"base64_urls": "true", "limit": 50}).json()
    by_id = {t["task_id"]: t for t in listed}
    assert decode_data_url(link_of(by_id[pdf["task_id"]]))[1] == PDF_BYTES
    assert decode_data_url(link_of(by_id[text["task_id"]]))[1] == TEXT_BYTES
    # Without the flag: signed links again.
    plain = alice.get(f"/task/{pdf['task_id']}", params={"base64_urls": "false"}).json()
    assert "/api/v1/files/" in link_of(plain)


# -- hosts ------------------------------------------------------------------------------------


def test_a_forged_host_does_not_name_the_links(server, alice):
    forged = {"Host": "evil.example"}
    task = alice.post(
        "/task/parse",
        json={"file": base64.b64encode(TEXT_BYTES).decode(), "file_name": "host.txt"},
        headers=forged,
    ).json()
    assert task["task_url"].startswith(f"{server.url}/api/v1/task/")
    assert link_of(task).startswith(f"{server.url}/api/v1/files/")
    for response in (
        alice.get(f"/task/{task['task_id']}", headers=forged),
        alice.get(f"/task/{task['task_id']}", headers=forged, params={"base64_urls": "true"}),
    ):
        assert "evil.example" not in response.text
        assert response.json()["task_url"].startswith(server.url)
    assert "evil.example" not in alice.get("/tasks", headers=forged).text


def test_an_allowed_host_names_the_links(server, alice):
    task = make(alice, TEXT_BYTES, "local.txt")
    host = f"localhost:{server.port}"
    got = alice.get(f"/task/{task['task_id']}", headers={"Host": host}).json()
    assert got["task_url"] == f"http://{host}/api/v1/task/{task['task_id']}"
    assert link_of(got).startswith(f"http://{host}/api/v1/files/")


@pytest.fixture(scope="module")
def public(db_backend, tmp_path_factory) -> Iterator[Server]:
    """A server with --public-url, and links that live one second."""
    db = new_database(db_backend, tmp_path_factory)
    flags = ("--public-url", "https://ledger.example.com/", "--url-ttl", "1")
    srv = Server(db, *flags, workdir=tmp_path_factory.mktemp("serve")).start()
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(db)


def test_public_url_wins_over_any_host(public):
    with public.client(add_key(public.db, "pat")) as pat:
        task = make(pat, TEXT_BYTES, "public.txt", expires_in=3600)
        for headers in ({"Host": "evil.example"}, {"Host": f"localhost:{public.port}"}):
            got = pat.get(f"/task/{task['task_id']}", headers=headers).json()
            assert got["task_url"].startswith("https://ledger.example.com/api/v1/task/")
            assert link_of(got).startswith("https://ledger.example.com/api/v1/files/")
    # The signature covers the path, not the host: the same link through this address.
    assert fetch(link_of(got).replace("https://ledger.example.com", public.url)).status_code == 200


def test_a_link_past_its_url_ttl_is_403(public):
    key = add_key(public.db, "quinn")
    with public.client(key) as quinn:
        task = make(quinn, TEXT_BYTES, "brief.txt")
    local = link_of(task).replace("https://ledger.example.com", public.url)
    expires = int(parse_qs(urlsplit(local).query)["expires"][0])
    assert expires > time.time() - 1, "a link made a moment ago has not expired yet"
    assert fetch(local).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert_refused(fetch(local), "Link expired")


# -- rotation ---------------------------------------------------------------------------------


def test_after_rotate_url_secret_old_links_are_403_in_every_process(server):
    # A second server process on the same database (as ``serve --workers 2`` runs).
    other = Server(server.db).start()
    try:
        key = add_key(server.db, "rita")
        with other.client(key) as rita:
            task = make(rita, TEXT_BYTES, "rotate.txt")
        old = link_of(task)  # made by the second process
        on_first = old.replace(other.url, server.url)
        assert fetch(old).status_code == 200 and fetch(on_first).status_code == 200

        result = CliRunner().invoke(cli, ["keys", "rotate-url-secret", "--db", str(server.db)])
        assert result.exit_code == 0, result.output
        assert "Rotated" in result.output

        # At once, with no restart, in both processes.
        assert_refused(fetch(old), "Invalid link")
        assert_refused(fetch(on_first), "Invalid link")

        # New links work, from each process once it has read the new secret (within 2 s).
        with server.client(key) as rita_here, other.client(key) as rita_there:
            for client in (rita_here, rita_there):

                def works(client: httpx.Client = client) -> bool:
                    link = link_of(client.get(f"/task/{task['task_id']}").json())
                    return fetch(link).status_code == 200

                wait_for(works, timeout=10, what="a link signed with the new secret")
                new = link_of(client.get(f"/task/{task['task_id']}").json())
                assert new.split("signature=")[1] != old.split("signature=")[1]
                assert fetch(new).content == TEXT_BYTES
    finally:
        other.stop()


# -- clock-bound cases, in process --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def timed(database) -> Iterator[tuple[InProcessServer, Clock]]:
    srv = InProcessServer(database, url_ttl=60, sweep_interval=0).start()
    clock = Clock()
    srv.app.state.service.clock = clock
    try:
        yield srv, clock
    finally:
        srv.stop()


def test_a_link_works_until_its_expiry_and_is_403_from_then_on(timed):
    srv, clock = timed
    with srv.client(add_key(srv.db, "tess")) as tess, srv.client(None) as anyone:
        before = datetime.now(UTC).timestamp()
        task = make(tess, TEXT_BYTES, "clock.txt")
        now = datetime.now(UTC).timestamp()
        url = link_of(task)
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        # 60 s from the moment the link was made (between before and now), rounded up to 6 s.
        assert expires - before >= 60 and expires - now <= 66
        clock.offset = timedelta(seconds=expires - now - 0.5)
        assert anyone.get(url).status_code == 200
        clock.offset = timedelta(seconds=expires - now + 0.01)
        assert_refused(anyone.get(url), "Link expired")
        # A link made now lives on.
        again = link_of(tess.get(f"/task/{task['task_id']}").json())
        assert anyone.get(again).status_code == 200


def test_a_link_to_a_task_past_its_expires_at_is_404(timed):
    srv, clock = timed
    with srv.client(add_key(srv.db, "uma")) as uma, srv.client(None) as anyone:
        task = make(uma, TEXT_BYTES, "short.txt", expires_in=10)
        url = link_of(task)
        assert uma.get(f"/task/{task['task_id']}/cancel").status_code == 200
        assert anyone.get(url).status_code == 200
        clock.offset = timedelta(seconds=11)  # the link lives on; the task does not
        response = anyone.get(url)
        assert (response.status_code, response.text) == (404, "Task not found")


def test_a_link_whose_input_is_purged_is_404(timed):
    srv, _ = timed
    with srv.client(add_key(srv.db, "vic")) as vic, srv.client(None) as anyone:
        task = make(vic, b"a blob of its own\n", "purged.txt")
        url = link_of(task)
        assert anyone.get(url).status_code == 200
        sha = hashlib.sha256(b"a blob of its own\n").hexdigest()
        execute(srv.db, "DELETE FROM blobs WHERE sha256 = ?", sha)
        assert anyone.get(url).status_code == 404


def test_in_process_the_hosts_are_the_allowed_ones(database):
    with InProcessServer(database, allowed_hosts=("ledger.local:8443", "alt.local")) as srv:
        with srv.client(srv.admin_key) as admin:
            task = make(admin, TEXT_BYTES, "hosts.txt")
            assert task["task_url"].startswith("http://ledger.local:8443/"), "testserver.local"
            for host, base in [
                ("alt.local", "http://alt.local"),
                ("ALT.local:9000", "http://alt.local:9000"),
                ("ledger.local:8443", "http://ledger.local:8443"),
                ("ledger.local:8444", "http://ledger.local:8443"),
                ("ledger.local", "http://ledger.local:8443"),
                ("evil.example", "http://ledger.local:8443"),
                ("alt.local@evil.example", "http://ledger.local:8443"),
                ("alt.local.evil.example", "http://ledger.local:8443"),
            ]:
                got = admin.get(f"/task/{task['task_id']}", headers={"Host": host}).json()
                assert got["task_url"].startswith(f"{base}/api/v1/task/"), host
                assert link_of(got).startswith(f"{base}/api/v1/files/"), host


# -- the pieces -------------------------------------------------------------------------------


class FakeRecords:
    def __init__(self) -> None:
        self.secret = b"s" * 32
        self.reads = 0

    def url_secret(self) -> bytes:
        self.reads += 1
        return self.secret


def test_the_signature_is_hmac_sha256_over_method_path_and_expires():
    records = FakeRecords()
    signer = UrlSigner(records)  # type: ignore[arg-type]
    signature = signer.sign("GET", "/api/v1/files/t/input", 1700000000)
    expected = hmac.new(
        records.secret, b"GET\n/api/v1/files/t/input\n1700000000", hashlib.sha256
    ).hexdigest()
    assert signature == expected
    assert signer.verify("GET", "/api/v1/files/t/input", "1700000000", signature)
    assert not signer.verify("HEAD", "/api/v1/files/t/input", "1700000000", signature)
    assert not signer.verify("GET", "/api/v1/files/u/input", "1700000000", signature)
    assert not signer.verify("GET", "/api/v1/files/t/input", "1700000001", signature)


def test_signing_rereads_the_secret_after_the_refresh_and_verifying_always():
    records = FakeRecords()
    ticks = [0.0]
    signer = UrlSigner(records, refresh=2.0, monotonic=lambda: ticks[0])  # type: ignore[arg-type]
    first = signer.sign("GET", "/p", 1)
    records.secret = b"r" * 32  # rotated by another process
    assert signer.sign("GET", "/p", 1) == first, "the cached secret, within the refresh"
    assert not signer.verify("GET", "/p", "1", first), "verified against the stored secret"
    reads = records.reads
    ticks[0] = 0.5
    second = signer.sign("GET", "/p", 1)
    assert second != first and records.reads == reads, "verify refreshed the cache"
    records.secret = b"q" * 32
    ticks[0] = 2.6
    assert signer.sign("GET", "/p", 1) != second, "read again after the refresh interval"


@pytest.mark.parametrize(("ttl", "step"), [(3600, 300), (60, 6), (1, 1), (86400, 300), (15, 1)])
def test_expiry_is_the_ttl_rounded_up_to_a_step(ttl, step):
    at = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    expires = expiry(at, ttl)
    assert expires % step == 0
    assert ttl <= expires - at.timestamp() < ttl + step


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("example.com", ("example.com", None)),
        ("Example.COM:8080", ("example.com", 8080)),
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("[::1]:8000", ("[::1]", 8000)),
        ("[::1]", ("[::1]", None)),
        ("::1", ("[::1]", None)),
        ("a.b:0", None),
        ("a.b:65536", None),
        ("a.b:x", None),
        ("a b", None),
        ("a/b", None),
        ("user@host", None),
        ("", None),
        ("[::1]x", None),
        ("host:80:80", None),
    ],
)
def test_parse_host(text, parsed):
    assert parse_host(text) == parsed


def test_hosts_choose():
    hosts = Hosts(["ledger.example.com:443", "internal"])
    assert hosts.choose("ledger.example.com", "https") == "ledger.example.com"
    assert hosts.choose("ledger.example.com:443", "https") == "ledger.example.com:443"
    assert hosts.choose("ledger.example.com", "http") == "ledger.example.com:443"
    assert hosts.choose("internal:9000", "http") == "internal:9000"
    assert hosts.choose("evil.example", "https") == "ledger.example.com"
    assert hosts.choose(None, "https") == "ledger.example.com"
    by_port = Hosts(["internal"])
    assert by_port.choose("evil", "http", ("10.0.0.5", 8000)) == "internal:8000"
    assert by_port.choose("evil", "http", ("10.0.0.5", 80)) == "internal"
    none = Hosts([])
    assert none.choose("evil", "http", ("10.0.0.5", 8000)) == "10.0.0.5:8000"
    assert none.choose("evil", "http", ("::1", 8000)) == "[::1]:8000"
    assert none.choose("evil", "http", None) == "localhost"
    with pytest.raises(ValueError, match="Not a host"):
        Hosts(["bad host"])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1:8000", "localhost:8000")),
        ("localhost", ("localhost:8000", "127.0.0.1:8000")),
        ("::1", ("[::1]:8000", "localhost:8000")),
        ("0.0.0.0", ("localhost:8000", "127.0.0.1:8000")),
        ("::", ("localhost:8000", "127.0.0.1:8000")),
        ("10.1.2.3", ("10.1.2.3:8000",)),
        ("ledger.internal", ("ledger.internal:8000",)),
    ],
)
def test_serve_allows_its_bind_address_by_default(host, expected):
    assert default_allowed_hosts(host, 8000) == expected


def test_serve_refuses_a_bad_allowed_hosts_entry(tmp_path: Path):
    result = CliRunner().invoke(
        cli, ["serve", "--db", str(tmp_path / "x.db"), "--allowed-hosts", "good.example,a b"]
    )
    assert result.exit_code == 2
    assert "'a b' is not a host or host:port" in result.output
    assert not (tmp_path / "x.db").exists(), "refused before anything was opened"
