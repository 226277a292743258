"""Links in answers: signed, expiring file links (Chunkr's presigned ``input_file_url`` and
``pdf_url``), their ``data:`` form (``base64_urls``), and the hosts links may name.

**Signed links.** ``{base}/api/v1/files/{task_id}/input?expires=<unix seconds>&signature=<hex>``
where the signature is HMAC-SHA256, under a server secret kept in the database
(``Records.url_secret``), over ``GET``, the path and ``expires``. Anyone holding the link may
fetch the input with no key until it expires; a changed byte of the path, ``expires`` or the
signature, or an expired link, is 403. ``pdf_url`` is the same link when the input is a PDF.

The secret is shared by every server process on the database and replaced by ``taskledger keys
rotate-url-secret``. A link is verified against the secret as stored at that moment (read in
the same read job as the file, so a rotation refuses old links at once, in every process);
links are signed with a copy cached for ``SECRET_REFRESH`` seconds (as keys are cached), so a
process signs with the new secret within that long after a rotation.

``expires`` is rounded up to a step of a tenth of the lifetime (at most five minutes): every
answer in the same step carries the same link, so a client comparing answers or a cache sees
one URL; a link lives at least ``Settings.url_ttl`` seconds and at most one step more.

**Who gets a link.** Links are handed out by ``UseCase.LINK_INPUT`` (a user for its own tasks,
an admin for any); a caller the table does not list (a worker, which may read an input only
while it processes the task) gets the authenticated route ``{task_url}/input`` instead, so a
link never outlives what the caller's key may read.

**Hosts.** Without ``--public-url`` a link's base is the request's Host only when it is one of
``Settings.allowed_hosts``; any other Host gets the first allowed host (``Hosts.choose``), so a
forged Host header cannot plant links in an answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from api.core import OCTET_STREAM, Download, ServiceCore, now
from api.filetypes import PDF
from api.policy import Caller, Forbidden, Grant, UseCase, authorize
from ledger.decider import is_visible
from ledger.log import Records
from ledger.state import TaskState

if TYPE_CHECKING:
    from api.composition import Store
    from api.groupcommit import Writer
    from api.keys import Gate
    from api.readpool import ReadPool
    from api.settings import Settings

#: The signed route's path below the base URL.
FILES_PATH = "/api/v1/files"
#: How long a process signs with its cached copy of the secret before reading it again.
SECRET_REFRESH = 2.0
#: The longest step ``expires`` is rounded up to.
MAX_EXPIRY_STEP = 300

_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class InvalidLink(Forbidden):
    """A signed link that was altered, has expired, or was signed with a rotated secret (403)."""


def input_path(task_id: str) -> str:
    """The signed route's path for a task's input (what the signature covers)."""
    return f"{FILES_PATH}/{task_id}/input"


def expiry(at: datetime, ttl: int) -> int:
    """When a link made at ``at`` expires (unix seconds): ``ttl`` seconds on, rounded up to
    the step (a tenth of ``ttl``, 1 to MAX_EXPIRY_STEP seconds)."""
    step = min(MAX_EXPIRY_STEP, max(1, ttl // 10))
    return math.ceil((at.timestamp() + ttl) / step) * step


def data_url(media_type: str | None, data: bytes) -> str:
    return f"data:{media_type or OCTET_STREAM};base64,{base64.b64encode(data).decode()}"


class UrlSigner:
    """HMAC-SHA256 signatures over (method, path, expires) with the stored secret."""

    def __init__(
        self,
        records: Records,
        *,
        refresh: float = SECRET_REFRESH,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._refresh = refresh
        self._monotonic = monotonic
        self._cached: tuple[bytes, hmac.HMAC, float]
        self._keep(records.url_secret())

    def _keep(self, secret: bytes) -> hmac.HMAC:
        keyed = hmac.new(secret, digestmod=hashlib.sha256)
        # One tuple, swapped whole: readers on other threads see the old or the new one.
        self._cached = (secret, keyed, self._monotonic())
        return keyed

    def sign(self, method: str, path: str, expires: int) -> str:
        """The signature, with the cached secret (read again every ``refresh`` seconds)."""
        _, keyed, loaded = self._cached
        if self._monotonic() - loaded >= self._refresh:
            keyed = self._keep(self._records.url_secret())
        return _digest(keyed, method, path, str(expires))

    def verify(self, method: str, path: str, expires: str, signature: str) -> bool:
        """Whether ``signature`` signs (method, path, expires) under the secret as stored now.
        ``expires`` is checked as sent (digits only), so any changed byte fails; the digests
        are compared in constant time."""
        if not _EXPIRES.fullmatch(expires) or not _SIGNATURE.fullmatch(signature):
            return False
        secret = self._records.url_secret()
        cached, keyed, _ = self._cached
        if secret != cached:
            keyed = self._keep(secret)
        expected = _digest(keyed, method, path, expires)
        return hmac.compare_digest(expected.encode(), signature.encode())


def _digest(keyed: hmac.HMAC, method: str, path: str, expires: str) -> str:
    mac = keyed.copy()
    mac.update(f"{method}\n{path}\n{expires}".encode())
    return mac.hexdigest()


class FileLinks(NamedTuple):
    """A task's file links in one answer."""

    input_file_url: str
    #: The input's own link when it is a PDF; None: the stored output's ``pdf_url`` stands.
    pdf_url: str | None


class Linker:
    """How one answer links: its base URL, and each task's file links (``files``, which reads
    the input's bytes for ``data:`` links: call it on a reader thread then)."""

    __slots__ = ("base_url", "files")

    def __init__(self, base_url: str, files: Callable[[TaskState], FileLinks]) -> None:
        self.base_url = base_url
        self.files = files


class LinkCases(ServiceCore):
    """The link use cases ``api.service.TaskLedger`` inherits: what links an answer carries,
    and fetching a task's input by its signed link."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        reads: ReadPool,
        gate: Gate,
        settings: Settings,
        clock: Callable[[], datetime] = now,
    ) -> None:
        super().__init__(store, writer, reads, gate, settings, clock)
        self.signer = UrlSigner(store.records)
        self.hosts = Hosts(settings.allowed_hosts)

    def linker(self, caller: Caller, base_url: str, *, base64_urls: bool = False) -> Linker:
        """The links of one answer to ``caller``: signed links (or ``data:`` URLs) for the
        tasks ``UseCase.LINK_INPUT`` lets it link to, the authenticated input route for the
        rest."""
        try:
            grant: Grant | None = authorize(UseCase.LINK_INPUT, caller)
        except Forbidden:
            grant = None
        at = self.clock()
        expires = expiry(at, self.settings.url_ttl)

        def files(state: TaskState) -> FileLinks:
            keyed = f"{base_url}/api/v1/task/{state.task_id}/input"
            if grant is None or state.file is None or not grant.sees(state, at):
                return FileLinks(keyed, None)
            if base64_urls:
                data = self.store.log.get_blob(state.file)
                if data is None:
                    return FileLinks(keyed, None)
                url = data_url(state.media_type, data)
            else:
                path = input_path(state.task_id)
                signature = self.signer.sign("GET", path, expires)
                url = (
                    f"{base_url}{input_path(quote(state.task_id, safe=''))}"
                    f"?expires={expires}&signature={signature}"
                )
            return FileLinks(url, url if state.media_type == PDF else None)

        return Linker(base_url, files)

    async def read_linked_input(
        self, task_id: str, *, expires: str | None, signature: str | None
    ) -> Download:
        """The input a signed link names: 403 (InvalidLink) unless the signature verifies and
        the link has not expired, checked before the task is looked at; then 404 if the task
        is gone (deleted, expired) or its input purged. No key: the signature is the grant.
        Streamed as ``read_input`` is."""
        state, first = await self.reads.run(
            self._read_linked_input, task_id, expires or "", signature or "", self.clock()
        )
        return self._input_download(state, first, state.media_type or OCTET_STREAM)

    def _read_linked_input(
        self, task_id: str, expires: str, signature: str, at: datetime
    ) -> tuple[TaskState, bytes]:
        if not self.signer.verify("GET", input_path(task_id), expires, signature):
            raise InvalidLink(
                "Invalid link: its signature does not match (it was altered, or the server's "
                "link secret was rotated since); get the task again for a new link"
            )
        if at.timestamp() >= int(expires):
            raise InvalidLink("Link expired; get the task again for a new link")
        state = self.store.state(task_id)
        return self._opened_input(state if state is not None and is_visible(state, at) else None)


# -- hosts -----------------------------------------------------------------------------------

_NAME = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")


def parse_host(text: str) -> tuple[str, int | None] | None:
    """``host`` or ``host:port`` (an IPv6 address in brackets, or bare without a port) as
    (lower-case name, port or None); None if it is neither."""
    value = text.strip().lower()
    if value.count(":") > 1 and not value.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(value)}]", None
        except ValueError:
            return None
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text_ = value.partition(":")
        port_text = port_text_ if sep else None
    if not _NAME.fullmatch(name):
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _join(name: str, port: int | None) -> str:
    return name if port is None else f"{name}:{port}"


class Hosts:
    """The hosts links may name: an entry ``host`` allows that host on any port,
    ``host:port`` on that port only (a Host with no port has its scheme's default)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        parsed = []
        for entry in allowed:
            found = parse_host(entry)
            if found is None:
                raise ValueError(f"Not a host or host:port: {entry!r}")
            parsed.append(found)
        self._any_port = frozenset(name for name, port in parsed if port is None)
        self._exact = frozenset((name, port) for name, port in parsed if port is not None)
        self._first = parsed[0] if parsed else None

    def choose(self, host: str | None, scheme: str, server: Sequence[object] | None = None) -> str:
        """The host[:port] for links: the request's ``host`` if allowed, else the first
        allowed entry (one without a port gets the port the request came in on), or with none
        allowed the address the request came in on (``server``, the ASGI scope's)."""
        default = 443 if scheme in ("https", "wss") else 80
        if host:
            found = parse_host(host)
            if found is not None:
                name, port = found
                if name in self._any_port or (name, port or default) in self._exact:
                    return _join(name, port)
        server_port = server[1] if server and isinstance(server[1], int) else None
        if self._first is not None:
            name, port = self._first
            port = port if port is not None else server_port
        elif server and isinstance(server[0], str):
            name = f"[{server[0]}]" if ":" in server[0] else server[0]
            port = server_port
        else:
            return "localhost"
        return _join(name, None if port == default else port)


def default_allowed_hosts(host: str, port: int) -> tuple[str, ...]:
    """``serve``'s allowed hosts when none are given: the bind address and port, with the
    other names of loopback when bound to it; ``localhost`` when bound to every interface
    (the bind address is no address then: ``--public-url`` or ``--allowed-hosts`` say which
    name clients use)."""
    name = host.strip().lower().strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if name == "localhost" or (address is not None and address.is_loopback):
        other = "127.0.0.1" if address is None or address.version == 4 else "::1"
        names = [name, "localhost", other]
    elif not name or (address is not None and address.is_unspecified):
        names = ["localhost", "127.0.0.1"]
    else:
        names = [name]
    unique = dict.fromkeys(f"[{n}]" if ":" in n else n for n in names)
    return tuple(f"{n}:{port}" for n in unique)


def binds_every_interface(host: str) -> bool:
    name = host.strip().strip("[]")
    try:
        return not name or ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return False
