"""A create's ``file`` given as an http(s) URL: the server downloads it, as Chunkr does.

The service takes the file either as bytes or as a ``FileUrl``; a URL goes to the ``Fetcher``
port, which the composition root builds from ``Settings`` as a ``UrlFetcher`` (httpx, async,
streamed). What a download is held to:

- only ``http`` and ``https``, and no user name or password in the URL (none is ever sent, so
  none can follow a redirect to another server);
- at most ``max_bytes`` (the request body limit): a declared ``Content-Length`` past it is
  refused before the body is read, and reading stops as soon as the body passes it;
- one deadline (``fetch_timeout``) for everything: resolving, connecting, every redirect and
  the whole body;
- at most five redirects, each new URL checked as the first was;
- an answer other than 2xx is refused;
- unless ``allow_private``: no loopback, private, link-local, shared, multicast, reserved or
  unspecified address, IPv4 or IPv6 (an IPv6 address that carries an IPv4 one, mapped, NAT64
  or 6to4, is judged by the IPv4 address). The check is made where the connection is made: the
  connection pool's network backend (``_CheckedBackend``) resolves the host itself, checks every
  address it resolves to, and connects to a checked address, so a second DNS answer (DNS
  rebinding) never reaches a socket. The request still names the URL's host (the ``Host``
  header, and the TLS server name and certificate check, which httpcore takes from the URL).

No cookie is kept (``_NoCookies``): the client is shared by every caller's downloads. The file's
name is taken from ``Content-Disposition`` (``filename*`` first, then ``filename``) or else the
last segment of the final URL's path, made a plain file name (``clean_file_name``).

Every refusal is a ``DownloadFailed`` (a ``BadRequest``, so 400), its message saying why in a
person's words: "Could not download the file: the server answered 404".
"""

from __future__ import annotations

import asyncio
import codecs
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from http.cookiejar import Cookie, CookieJar
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Protocol
from urllib.parse import unquote

import httpcore
import httpx
import msgspec

from api.contract import MAX_FILE_NAME, UNSAFE_CATEGORIES, check_file_name
from api.refusals import BadRequest, size_text
from ledger import __version__

#: Redirects a download may follow; one more is refused.
MAX_REDIRECTS = 5

#: Resolves a host name to the addresses (as text) it may be reached at.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class FileUrl(msgspec.Struct, frozen=True):
    """A create's file given as an http(s) URL, for the server to download."""

    url: str


class Fetched(msgspec.Struct, frozen=True, kw_only=True):
    """A downloaded file: its bytes, and the name the server gave it (or the URL's)."""

    data: bytes
    file_name: str | None = None


class Fetcher(Protocol):
    """The port through which the service downloads a file given by URL."""

    async def fetch(self, url: str) -> Fetched: ...

    def close(self) -> None: ...


class DownloadFailed(BadRequest):
    """The file at a URL could not be downloaded (400); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Could not download the file: {reason}")
        self.reason = reason


# -- which addresses are refused --------------------------------------------------------------

_NAT64 = IPv6Network("64:ff9b::/96")
_SHARED = IPv4Network("100.64.0.0/10")


def refusal_kind(address: str | IPv4Address | IPv6Address) -> str | None:
    """Why the server will not download from ``address`` without ``--allow-private-fetch``
    ("loopback", "private", "link-local", ...), or None for a public address.

    An IPv6 address carrying an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) is judged by the IPv4 address it reaches.
    Python's own flags are read in this order because they overlap (``::1`` is both loopback and
    reserved) and are not complete on their own (multicast counts as global)."""
    ip = ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour
        if carried is None and ip in _NAT64:
            carried = IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            return refusal_kind(carried)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if isinstance(ip, IPv4Address) and ip in _SHARED:
        return "shared"
    if not ip.is_global:
        return "non-public"
    return None


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise DownloadFailed(f"the host {host} was not found") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_ip_literal(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving the host itself: every address is checked, then
    the connection is made to a checked address (tried in the resolver's order). The TLS
    handshake that follows still names the URL's host (httpcore passes it to ``start_tls``)."""

    def __init__(self, *, allow_private: bool, resolve: Resolver) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private
        self._resolve = resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port)
        if not addresses:
            raise DownloadFailed(f"the host {host} was not found")
        if not self._allow_private:
            for address in addresses:
                kind = refusal_kind(address)
                if kind is None:
                    continue
                where = (
                    f"{host} is a private address ({kind})"
                    if _is_ip_literal(host)
                    else f"{host} resolves to a private address ({address}, {kind})"
                )
                raise DownloadFailed(
                    f"{where}; the server refuses such URLs unless started with "
                    "--allow-private-fetch"
                )
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("downloads do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request, response and error mapping), its connection pool
    built with ``_CheckedBackend``: httpx takes no network backend, httpcore's pool does. No
    connection is kept alive: a download is a one-off, and a pooled connection to a host some
    caller chose is nothing to keep."""

    def __init__(self, backend: _CheckedBackend) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=0,
            network_backend=backend,
        )


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing: one caller's download never sends another's cookies."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


# -- the file's name ---------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAMETER = re.compile(rf';\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def clean_file_name(name: str) -> str | None:
    """``name`` as a plain file name that ``check_file_name`` takes: its last path segment
    (either slash), without the characters no name may hold (controls, format characters
    such as bidirectional overrides, separators, unassigned: ``UNSAFE_CATEGORIES``), trimmed,
    and shortened to the longest name allowed (keeping a short extension); None if nothing
    is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in UNSAFE_CATEGORIES)
    name = name.strip()
    if name in ("", ".", ".."):
        return None
    if len(name) > MAX_FILE_NAME:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = stem[: MAX_FILE_NAME - len(extension) - 1].rstrip() + "." + extension
        else:
            name = name[:MAX_FILE_NAME]
    return check_file_name(name)


def _extended_value(value: str) -> str | None:
    """An RFC 8187 value (``charset'language'percent-encoded``), decoded; None if invalid."""
    charset, _, rest = value.partition("'")
    _, sep, encoded = rest.partition("'")
    if not sep:
        return None
    try:
        codecs.lookup(charset)  # unquote only consults it when something is escaped
        return unquote(encoded, encoding=charset, errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


def disposition_file_name(header: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives: ``filename*`` (RFC 6266: it wins),
    else ``filename``; cleaned by ``clean_file_name``. None when it gives none."""
    if not header:
        return None
    parameters: dict[str, str] = {}
    for match in _PARAMETER.finditer(header):
        key, value = match.group(1).lower(), match.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        parameters.setdefault(key, value)
    if "filename*" in parameters:
        extended = _extended_value(parameters["filename*"])
        name = clean_file_name(extended) if extended else None
        if name:
            return name
    plain = parameters.get("filename")
    return clean_file_name(plain) if plain else None


def url_file_name(url: httpx.URL) -> str | None:
    """The last segment of the URL's path, percent-decoded and cleaned; None if empty."""
    segment = url.raw_path.split(b"?", 1)[0].rsplit(b"/", 1)[-1]
    if not segment:
        return None
    return clean_file_name(unquote(segment.decode("ascii", "replace"), errors="replace"))


# -- the fetcher -------------------------------------------------------------------------------


def checked_url(url: str | httpx.URL, *, redirected: bool = False) -> httpx.URL:
    """The URL to request, or DownloadFailed: http(s), a host, no user name or password."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        where = "the server redirected to an invalid URL" if redirected else "the URL is invalid"
        raise DownloadFailed(f"{where} ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        if redirected:
            raise DownloadFailed(
                f"the server redirected to a {parsed.scheme or 'relative'} URL; only http and "
                "https URLs are downloaded"
            )
        raise DownloadFailed("only http and https URLs are downloaded")
    if not parsed.host:
        raise DownloadFailed("the URL has no host")
    if parsed.userinfo:
        raise DownloadFailed(
            ("the server redirected to a URL" if redirected else "the URL")
            + " holding a user name or password; this server sends no credentials (use a URL"
            " that needs none, such as a signed one)"
        )
    return parsed.copy_with(fragment=None)


class UrlFetcher:
    """Downloads files for creates: one httpx ``AsyncClient`` (made on first use) shared by
    every download. See the module's docstring for the limits."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        allow_private: bool = False,
        max_redirects: int = MAX_REDIRECTS,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.allow_private = allow_private
        self.max_redirects = max_redirects
        self._resolve = resolve
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _client_now(self) -> httpx.AsyncClient:
        if self._client is None:
            backend = _CheckedBackend(allow_private=self.allow_private, resolve=self._resolve)
            self._client = httpx.AsyncClient(
                transport=_CheckedTransport(backend),
                headers={
                    "User-Agent": f"taskledger/{__version__}",
                    "Accept": "*/*",
                    # The bytes as stored (as curl saves them), never decoded here: a decoder
                    # could turn a small compressed body into far more than max_bytes at once.
                    "Accept-Encoding": "identity",
                },
                cookies=_NoCookies(),
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def fetch(self, url: str) -> Fetched:
        """The file at ``url`` and its name, or DownloadFailed saying why not."""
        if self._closed:
            raise DownloadFailed("the server is shutting down")
        target = checked_url(url)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(target)
        except (TimeoutError, httpx.TimeoutException):
            raise DownloadFailed(f"it timed out after {self.timeout:g} s") from None

    async def _follow(self, target: httpx.URL) -> Fetched:
        client = self._client_now()
        for redirects in range(self.max_redirects + 1):
            try:
                async with client.stream("GET", target) as response:
                    if response.is_redirect:
                        if redirects == self.max_redirects:
                            raise DownloadFailed(
                                f"too many redirects (more than {self.max_redirects})"
                            )
                        location = response.headers["location"]
                        try:
                            joined = response.url.join(location)
                        except httpx.InvalidURL as exc:
                            raise DownloadFailed(
                                f"the server redirected to an invalid URL ({exc})"
                            ) from None
                        target = checked_url(joined, redirected=True)
                        continue
                    if not response.is_success:
                        raise DownloadFailed(f"the server answered {response.status_code}")
                    data = await self._body(response)
                    name = disposition_file_name(
                        response.headers.get("content-disposition")
                    ) or url_file_name(response.url)
                    return Fetched(data=data, file_name=name)
            except httpx.TimeoutException:
                raise
            except httpx.ConnectError as exc:
                raise DownloadFailed(f"could not connect to {target.host} ({exc})") from None
            except httpx.RemoteProtocolError as exc:
                raise DownloadFailed(f"{target.host} did not answer in HTTP ({exc})") from None
            except httpx.HTTPError as exc:
                raise DownloadFailed(
                    f"the connection to {target.host} failed ({exc or type(exc).__name__})"
                ) from None
        raise AssertionError("unreachable: the last hop returns or raises")

    async def _body(self, response: httpx.Response) -> bytes:
        """The body, read in chunks: refused once it passes ``max_bytes`` (at most one
        chunk past the limit is ever held), or up front when its declared length does."""
        too_large = DownloadFailed(f"the file is larger than the {size_text(self.max_bytes)} limit")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        parts: list[bytes] = []
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
            if total > self.max_bytes:
                raise too_large
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Take no more downloads. Nothing is left to close on the wire: no connection
        outlives its download (keep-alive is off), and the server answers its requests in
        flight before it shuts the service down."""
        self._closed = True
        self._client = None
