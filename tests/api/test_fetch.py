"""A create's ``file`` given as an http(s) URL is downloaded by the server (api/fetch.py).

The files come from a loopback HTTP server this module starts (tests/fileserver.py). The
server under test is a real ``taskledger serve`` started with ``--allow-private-fetch`` (or it
could not reach 127.0.0.1), a 1 s ``--fetch-timeout`` and a 1 MiB body limit; the chunkr-ai SDK
uploads through it. Without the flag, loopback URLs are refused."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from chunkr_ai import Chunkr

from api.composition import close_service, open_service
from api.fetch import (
    DownloadFailed,
    FileUrl,
    UrlFetcher,
    clean_file_name,
    disposition_file_name,
    refusal_kind,
)
from api.keys import create_key
from api.refusals import Busy, IdempotencyMismatch
from api.service import TaskLedger
from api.settings import settings_for
from tests.fileserver import DOC, FileServer
from tests.inprocess import InProcessServer, add_key
from tests.pg import drop_database, new_database
from tests.server import Server, free_port
from tests.support import chunkr_output

REPO = Path(__file__).resolve().parents[2]
PREFIX = "Could not download the file: "


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(db_backend, tmp_path_factory):
    """A real ``taskledger serve`` that may download from loopback, quickly given up on, over a
    fresh database of the backend under test."""
    db = new_database(db_backend, tmp_path_factory)
    flags = ("--allow-private-fetch", "--fetch-timeout", "1", "--max-body-mb", "1")
    srv = Server(db, *flags, workdir=tmp_path_factory.mktemp("serve")).start()
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(db)


# -- through the server ------------------------------------------------------------------------


def complete_one(server: Server, worker_key: str, seen: list[str | None]) -> None:
    """Claim the next task as a worker would, note its file name, and complete it."""
    with server.client(worker_key) as worker:
        claimed = worker.post("/worker/claim", json={"worker_id": "w-fetch", "wait_seconds": 10})
        assert claimed.status_code == 200, claimed.text
        task = claimed.json()
        name = task["output"]["file_name"] if task["output"] else None
        seen.append(name)
        done = worker.post(
            f"/task/{task['task_id']}/complete",
            json={"worker_id": "w-fetch", "output": chunkr_output(name or "unnamed")},
        )
        assert done.status_code == 200, done.text


def test_the_sdk_uploads_a_url_and_the_server_downloads_it(
    server, user_keys, files, alice, monkeypatch
):
    # The SDK calls load_dotenv(override=True): a stray .env would point it elsewhere.
    assert not (REPO / ".env").exists(), "a .env in the repository would override CHUNKR_URL"
    monkeypatch.setenv("CHUNKR_URL", server.api)
    monkeypatch.setenv("CHUNKR_API_KEY", user_keys["alice"])
    seen: list[str | None] = []
    worker = threading.Thread(target=complete_one, args=(server, user_keys["worker"], seen))
    worker.start()
    chunkr = Chunkr(url=server.api, api_key=user_keys["alice"])
    try:
        task = chunkr.upload(f"{files.url}/doc.md")  # upload waits until the task is done
    finally:
        chunkr.close()
        worker.join(15)
    assert seen == ["doc.md"]  # the name the server gave the task, from the URL's path
    assert task.status == "Succeeded"
    assert task.output.file_name == "doc.md"
    assert "/doc.md" in files.paths()
    raw = alice.get(f"/task/{task.task_id}/input")
    assert raw.content == DOC
    assert "doc.md" in raw.headers["content-disposition"]


def create(client: httpx.Client, url: str, **fields: object) -> httpx.Response:
    return client.post("/task/parse", json={"file": url, **fields})


@pytest.mark.parametrize(
    "path, fields, name",
    [
        ("/doc.md", {}, "doc.md"),
        ("/named", {}, "résumé.md"),  # filename* wins over filename
        ("/sneaky", {}, "badname.md"),  # no directories, no control characters
        ("/named", {"file_name": "mine.md"}, "mine.md"),  # the caller's name wins
        ("/hops/5/doc.md", {}, "doc.md"),  # five redirects are followed
    ],
)
def test_the_downloaded_file_is_the_task_input_with_its_name(
    alice, ledger, files, path, fields, name
):
    before = ledger.count()
    answer = create(alice, files.url + path, **fields)
    assert answer.status_code == 200, answer.text
    task = answer.json()
    assert task["output"]["file_name"] == name
    assert alice.get(f"/task/{task['task_id']}/input").content == DOC
    assert ledger.count() == before + 1


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/missing", "the server answered 404"),
        ("/hops/6/doc.md", "too many redirects (more than 5)"),
        ("/endless", "the file is larger than the 1 MiB limit"),
        ("/declared-huge", "the file is larger than the 1 MiB limit"),
        ("/slow", "it timed out after 1 s"),
        ("/to-ftp", "the server redirected to a ftp URL; only http and https URLs are downloaded"),
        ("/to-credentials", "the server redirected to a URL holding a user name or password"),
    ],
)
def test_a_download_that_fails_is_400_with_its_reason_and_appends_nothing(
    alice, ledger, files, path, reason
):
    before = ledger.count()
    answer = create(alice, files.url + path)
    assert answer.status_code == 400
    assert answer.text.startswith(PREFIX + reason), answer.text
    assert ledger.count() == before


def test_an_unreachable_server_or_a_bad_url_is_400(alice, ledger):
    before = ledger.count()
    refused = create(alice, f"http://127.0.0.1:{free_port()}/doc.md")
    assert refused.status_code == 400
    assert refused.text.startswith(PREFIX + "could not connect to 127.0.0.1"), refused.text
    credentials = create(alice, "http://user:secret@127.0.0.1:1/doc.md")
    assert credentials.status_code == 400
    assert credentials.text.startswith(PREFIX + "the URL holding a user name or password")
    assert ledger.count() == before


def test_an_empty_download_is_refused_as_an_empty_file(alice, ledger, files):
    before = ledger.count()
    answer = create(alice, files.url + "/empty")
    assert (answer.status_code, answer.text) == (400, "File is empty")
    assert ledger.count() == before


def test_without_the_flag_a_loopback_url_is_refused_before_any_request(database, files):
    seen = len(files.requests)
    with InProcessServer(database, sweep_interval=0) as srv:
        with srv.client(add_key(srv.db, "alice")) as alice:
            literal = create(alice, f"{files.url}/doc.md")
            named = create(alice, f"http://localhost:{files.port}/doc.md")
            ipv6 = create(alice, f"http://[::ffff:127.0.0.1]:{files.port}/doc.md")
            listed = alice.get("/tasks/")
    assert (literal.status_code, literal.text) == (
        400,
        PREFIX + "127.0.0.1 is a private address (loopback); the server refuses such URLs "
        "unless started with --allow-private-fetch",
    )
    assert named.status_code == 400
    assert named.text.startswith(PREFIX + "localhost resolves to a private address ("), named.text
    assert "loopback); the server refuses such URLs" in named.text
    assert ipv6.status_code == 400 and "is a private address (loopback)" in ipv6.text
    assert listed.json() == []
    assert len(files.requests) == seen


# -- the fetcher on its own --------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, kind",
    [
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("2606:4700:4700::1111", None),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),
        # IPv6 addresses that reach an IPv4 one are judged by it.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b::808:808", None),
        ("2002:7f00:1::", "loopback"),
        ("2002:808:808::1", None),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible: deprecated, in ::/8
    ],
)
def test_address_classification(address, kind):
    assert refusal_kind(address) == kind


@pytest.mark.parametrize(
    "header, name",
    [
        ('attachment; filename="a b.pdf"', "a b.pdf"),
        ("attachment; filename=plain.txt", "plain.txt"),
        ("attachment; filename=\"plain.pdf\"; filename*=UTF-8''na%C3%AFve.pdf", "naïve.pdf"),
        ("attachment; filename*=UTF-8''na%C3%AFve.pdf; filename=\"plain.pdf\"", "naïve.pdf"),
        ("attachment; filename*=iso-8859-1'en'%A3%20rates.pdf", "£ rates.pdf"),
        ("attachment; filename*=bogus''x.pdf; filename=fallback.pdf", "fallback.pdf"),
        ('attachment; filename="a\\"b.txt"', 'a"b.txt'),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Users\\\\x\\\\report.pdf"', "report.pdf"),
        ("attachment; filename*=UTF-8''a%0D%0Ab%E2%80%A8c.md", "abc.md"),
        # A right-to-left override: "annexe\u202etxt.exe" reads as "annexeexe.txt".
        ("attachment; filename*=UTF-8''annexe%E2%80%AEtxt.exe", "annexetxt.exe"),
        ('attachment; filename=".."', None),
        ('attachment; filename="  "', None),
        ("inline", None),
        ("", None),
    ],
)
def test_a_content_disposition_name_is_a_plain_file_name(header, name):
    assert disposition_file_name(header) == name


def test_a_long_name_is_shortened_keeping_its_extension():
    name = clean_file_name("x" * 300 + ".pdf")
    assert name is not None and len(name) == 255 and name.endswith("x.pdf")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fetcher(**options: object) -> UrlFetcher:
    settings: dict[str, object] = {"max_bytes": 1 << 20, "timeout": 2.0, **options}
    return UrlFetcher(**settings)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_every_address_of_a_name_is_checked_and_nothing_is_sent(files):
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.216.34", "10.0.0.7"]

    seen = len(files.requests)
    with pytest.raises(DownloadFailed) as refused:
        await fetcher(resolve=resolve).fetch(f"http://files.test:{files.port}/doc.md")
    assert str(refused.value) == (
        PREFIX + "files.test resolves to a private address (10.0.0.7, private); the server "
        "refuses such URLs unless started with --allow-private-fetch"
    )
    assert asked == ["files.test"] and len(files.requests) == seen


@pytest.mark.anyio
async def test_the_connection_goes_to_the_address_resolved_and_names_the_urls_host(files):
    """The address connected to is the one the backend resolved and checked (files.test exists
    in no DNS: only the resolver given knows it), resolved once, and the request still names
    the URL's host."""
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.1"]

    got = await fetcher(resolve=resolve, allow_private=True).fetch(
        f"http://files.test:{files.port}/echo"
    )
    assert asked == [("files.test", files.port)]
    assert f"Host: files.test:{files.port}" in got.data.decode()
    assert got.file_name == "echo"


@pytest.mark.anyio
async def test_no_cookie_is_kept_between_downloads(files):
    shared = fetcher(allow_private=True)
    await shared.fetch(f"{files.url}/cookie")
    echoed = await shared.fetch(f"{files.url}/echo")
    assert "secret" not in echoed.data.decode()
    assert "Accept-Encoding: identity" in echoed.data.decode()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://127.0.0.1/doc.md", "only http and https URLs are downloaded"),
        ("http:///doc.md", "the URL has no host"),
        ("http://user:pw@127.0.0.1/doc.md", "the URL holding a user name or password"),
    ],
)
async def test_a_url_that_is_not_downloadable_is_refused_as_given(url, reason):
    with pytest.raises(DownloadFailed, match="^" + PREFIX + reason):
        await fetcher(allow_private=True).fetch(url)


@pytest.mark.anyio
async def test_a_closed_fetcher_downloads_nothing(files):
    closing = fetcher(allow_private=True)
    closing.close()
    with pytest.raises(DownloadFailed, match="shutting down"):
        await closing.fetch(f"{files.url}/doc.md")


# -- the service, without HTTP -----------------------------------------------------------------


@pytest.fixture
async def service(database) -> AsyncIterator[TaskLedger]:
    opened = open_service(settings_for(database, sweep_interval=0, allow_private_fetch=True))
    yield opened
    close_service(opened)


@pytest.mark.anyio
async def test_a_retry_is_answered_without_downloading_again(service, files):
    """The Idempotency-Key covers the URL the caller sent, not what it served: a retry of the
    same request is answered from its outcome, even if the URL now serves something else or
    nothing, and the file is not downloaded twice."""
    alice = service.authenticate(create_key(service.store.records, "alice", "user")[1])
    # A query of this test's own: the file server (one per module) serves every backend's run.
    path = f"/doc.md?retry-{uuid.uuid4().hex[:8]}"
    url = files.url + path
    first = await service.create(alice, file=FileUrl(url), idempotency_key="k")
    assert first.state.file_name == "doc.md"
    downloads = files.paths().count(path)
    again = await service.create(alice, file=FileUrl(url), idempotency_key="k")
    assert again == first
    assert files.paths().count(path) == downloads == 1
    with pytest.raises(IdempotencyMismatch):
        await service.create(alice, file=FileUrl(url + "&other"), idempotency_key="k")
    with pytest.raises(IdempotencyMismatch):
        await service.create(alice, file=DOC, idempotency_key="k")
    assert len(await service.list_tasks(alice)) == 1


@pytest.mark.anyio
async def test_downloads_run_side_by_side_up_to_the_large_create_limit(service, files):
    """Downloads wait on the event loop side by side (the file server sees them at once), and at
    most ``max_large_creates`` (4 by default) run in a process: one more is 503 at once."""
    alice = service.authenticate(create_key(service.store.records, "alice", "user")[1])
    limit = service.settings.max_large_creates
    files.peak = 0
    results = await asyncio.gather(
        *(service.create(alice, file=FileUrl(f"{files.url}/pause?{n}")) for n in range(limit + 1)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, Busy)]
    views = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) == 1 and "Too many file downloads at once" in str(refused[0])
    assert len(views) == limit and {v.state.file_name for v in views} == {"pause"}
    assert files.peak == limit, "the downloads were answered side by side"
