"""The one egress guard: every outbound call whose URL a tenant can influence goes through here.

Tenant webhooks (events.transport, over urllib3 pools of ``GUARDED_POOL_CLASSES``), tenant
functions (``post``), a tenant's own LLM or embedding endpoint (``openai_http_client``) and inbound
media (``fetch``). The policy, as Zulip's outgoing_http behind Smokescreen and Saleor's
requests-hardened apply it:

- the URL is http(s) with a host and no credentials (``check_url``, also when a URL is saved);
- the host is resolved and every address it resolves to must be public: loopback, private,
  link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified addresses are
  refused, unless ``EGRESS_ALLOW_PRIVATE_TARGETS`` (development, tests) or the address is inside one
  of the operator's ``EGRESS_ALLOWED_NETWORKS``;
- the connection goes to the address that was checked (a name that re-resolves elsewhere between the
  check and the connection cannot slip through), and each new connection checks again;
- environment proxies are never used (a proxy would make the check meaningless);
- redirects are never followed: a 3xx is an answer like any other error;
- answers are bounded in time and size: reading stops at the caller's cap.

Endpoints the operator configures (OPENAI_BASE_URL, EMBEDDING_BASE_URL, GRAPH_API_BASE_URL) are not
tenant-influenced and do not come through here; deployment credentials only ever go to those.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2
import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

USER_AGENT = "metachat/1"
MAX_URL_LENGTH = 2048


class EgressRefused(ValueError):
    """The URL may not be called. Not an OSError: no client library may retry it."""


class ResponseTooLarge(Exception):
    """An answer carried more than the caller's cap; reading stopped there."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the answer is larger than {limit} bytes")


# --- the address policy -----------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _allowed_networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in spec)


def address_problem(ip: str) -> str | None:
    """Why this address is not a destination a tenant may reach (None when it is)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if settings.EGRESS_ALLOW_PRIVATE_TARGETS:
        return None
    if any(address in network for network in _allowed_networks(tuple(settings.EGRESS_ALLOWED_NETWORKS))):
        return None
    for attribute, reason in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_private", "private"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_unspecified", "unspecified"),
    ):
        if getattr(address, attribute):
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


def resolve_checked(host: str, port: int) -> list[tuple[int, str]]:
    """(family, ip) of every address ``host`` resolves to; EgressRefused if any of them is not allowed.

    socket.gaierror propagates: a name that does not resolve is the caller's connection error."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys((int(info[0]), str(info[4][0])) for info in infos))
    for _family, ip in addresses:
        reason = address_problem(ip)
        if reason:
            raise EgressRefused(f"destination refused: {host} resolves to a {reason} address")
    return addresses


def check_url(url: str, *, https_only: bool = False, resolve: bool = True) -> None:
    """Validate a URL a tenant sets (webhook, function, LLM or embedding base URL).

    http(s) with a host name, no credentials (``https_only``: https unless private targets are allowed,
    for development); and, when the name resolves now, only to allowed addresses. A name that does not resolve yet is
    accepted: its calls fail visibly until it does, and every connection checks again.
    """
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise EgressRefused(f"the URL must be a string of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EgressRefused("the URL is not well formed") from None
    if (
        https_only
        and parts.scheme != "https"
        and not (parts.scheme == "http" and settings.EGRESS_ALLOW_PRIVATE_TARGETS)
    ):
        raise EgressRefused("the endpoint must use https")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EgressRefused("the URL must be http:// or https:// with a host name")
    if parts.username or parts.password:
        raise EgressRefused("credentials in the URL are not allowed; use a secret")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise EgressRefused("the URL may not contain spaces or control characters")
    if resolve:
        try:
            resolve_checked(parts.hostname, port or (443 if parts.scheme == "https" else 80))
        except (socket.gaierror, UnicodeError):
            return


# --- requests: tenant functions and media -------------------------------------------------------------------


class _GuardedConnectionMixin:
    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        try:
            addresses = resolve_checked(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        last_error: OSError | None = None
        for _family, ip in addresses:
            try:
                return urllib3_connection.create_connection(
                    (ip, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc  # type: ignore[arg-type]
            except OSError as exc:
                last_error = exc
        raise NewConnectionError(self, f"failed to connect: {last_error}")  # type: ignore[arg-type]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


# For a urllib3 PoolManager's ``pool_classes_by_scheme``: its connections are guarded.
GUARDED_POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = GUARDED_POOL_CLASSES


_local = threading.local()


def adapter() -> GuardedAdapter:
    """This thread's guarded connection pools. Requests go straight to the adapter: no session
    cookies, no environment proxies, no redirect handling at all."""
    current = getattr(_local, "adapter", None)
    if current is None:
        current = GuardedAdapter(pool_connections=32, pool_maxsize=4, max_retries=0)
        _local.adapter = current
    return current


def _send(
    method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float, max_bytes: int
) -> requests.Response:
    check_url(url, resolve=False)
    prepared = requests.Request(method, url, data=body, headers={"User-Agent": USER_AGENT, **headers}).prepare()
    # EgressRefused is a ValueError: urllib3 and requests let it through unwrapped and unretried.
    response = adapter().send(prepared, stream=True, timeout=(min(timeout, 5.0), timeout))
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ResponseTooLarge(max_bytes)
        content = response.raw.read(max_bytes, decode_content=True) or b""
        if response.raw.read(1, decode_content=True):
            raise ResponseTooLarge(max_bytes)
        response._content = content
        response.raw.release_conn()
    except BaseException:
        response.close()
        raise
    return response


def post(
    url: str, *, body: bytes, headers: dict[str, str], timeout: float, max_bytes: int = 65536
) -> requests.Response:
    """POST once through the guard, never following a redirect. At most ``max_bytes`` of the answer are
    read; a longer answer raises ResponseTooLarge."""
    return _send("POST", url, headers=headers, body=body, timeout=timeout, max_bytes=max_bytes)


def fetch(url: str, *, headers: dict[str, str] | None = None, timeout: float, max_bytes: int) -> requests.Response:
    """GET once through the guard (no redirects), the body streamed and cut at ``max_bytes``."""
    return _send("GET", url, headers=headers or {}, body=None, timeout=timeout, max_bytes=max_bytes)


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """``host`` matches one of ``patterns`` (``example.com`` exactly, ``*.example.com`` any subdomain)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


# --- httpx2: the openai client for a tenant's own endpoint --------------------------------------------------


class _GuardedBackend(httpcore2.SyncBackend):
    """Resolves, checks and connects to the checked address; TLS still verifies the original name."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            addresses = resolve_checked(host, port)
        except socket.gaierror as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}") from exc
        last_error: Exception | None = None
        for _family, ip in addresses:
            try:
                return super().connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore2.ConnectError as exc:
                last_error = exc
        raise httpcore2.ConnectError(f"failed to connect to {host}: {last_error}")


class _CappedStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseTooLarge(self._limit)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _GuardedTransport(httpx2.HTTPTransport):
    def __init__(self, *, max_bytes: int) -> None:
        super().__init__(trust_env=False)
        self._max_bytes = max_bytes
        self._pool = httpcore2.ConnectionPool(
            ssl_context=self._pool._ssl_context,  # type: ignore[attr-defined]
            max_connections=20,
            max_keepalive_connections=5,
            keepalive_expiry=30.0,
            network_backend=_GuardedBackend(),
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            response.close()
            raise ResponseTooLarge(self._max_bytes)
        response.stream = _CappedStream(response.stream, self._max_bytes)
        return response


def openai_http_client(*, timeout: float) -> httpx2.Client:
    """An HTTP client for the ``openai`` SDK talking to a tenant-chosen endpoint: guarded connections,
    no environment proxies, no redirects, answers capped at EGRESS_MAX_RESPONSE_BYTES."""
    return httpx2.Client(
        transport=_GuardedTransport(max_bytes=settings.EGRESS_MAX_RESPONSE_BYTES),
        trust_env=False,
        follow_redirects=False,
        timeout=timeout,
    )


def refusal_in(exc: BaseException) -> EgressRefused | ResponseTooLarge | None:
    """The egress refusal (or size cut) somewhere in ``exc``'s chain of causes, if any: client
    libraries wrap it into their own connection errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, EgressRefused | ResponseTooLarge):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
