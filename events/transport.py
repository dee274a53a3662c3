"""The one seam for HTTP to tenants' webhook receivers: requests with an SSRF guard and no redirects.

The destination is checked when the socket is opened, on the addresses DNS actually returned (so a
name that resolves, or re-resolves, to a private address is refused too), and the connection goes to
the address that was checked. Loopback, private, link-local, multicast, reserved and unspecified
addresses are refused unless ``WEBHOOK_ALLOW_PRIVATE_TARGETS`` is true (development and tests).
Environment proxies are never used: a proxy would make the check meaningless.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection


class DestinationRefused(ValueError):
    """The URL points at an address webhooks may not reach. Not an OSError: urllib3 must not retry it."""


def address_problem(ip: str) -> str | None:
    """Why this address is not a public destination (None when it is)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
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


def resolve_destination(host: str, port: int) -> list[tuple[int, str]]:
    """(family, ip) of every address ``host`` resolves to; DestinationRefused if any is not allowed."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys((int(info[0]), str(info[4][0])) for info in infos))
    if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
        for _family, ip in addresses:
            reason = address_problem(ip)
            if reason:
                raise DestinationRefused(f"destination refused: {host} resolves to {ip} ({reason} address)")
    return addresses


def check_url(url: str) -> None:
    """Validate a webhook URL when it is configured: http(s) and, if it resolves, an allowed address.

    A name that does not resolve yet is accepted (its deliveries fail visibly until it does).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("the URL must be http:// or https:// with a host name")
    if parts.username or parts.password:
        raise DestinationRefused("credentials in the URL are not allowed; use a custom header")
    try:
        resolve_destination(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror:
        return


class _GuardedConnectionMixin:
    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        try:
            addresses = resolve_destination(self._dns_host, self.port)
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


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


_local = threading.local()


def adapter() -> GuardedAdapter:
    """This thread's connection pools (kept-alive connections per receiver). Requests go straight
    to the adapter: no session cookies, no environment proxies, no redirect handling at all."""
    current = getattr(_local, "adapter", None)
    if current is None:
        current = GuardedAdapter(pool_connections=32, pool_maxsize=4, max_retries=0)
        _local.adapter = current
    return current


USER_AGENT = "metachat-webhooks/1"


def post(url: str, *, body: bytes, headers: dict[str, str], timeout: float) -> requests.Response:
    """POST once, never following a redirect. Only the first 64 KiB of the answer are read (enough
    for the excerpt); a longer answer costs the kept-alive connection, not the time to download it."""
    prepared = requests.Request("POST", url, data=body, headers={"User-Agent": USER_AGENT, **headers}).prepare()
    response = adapter().send(prepared, stream=True, timeout=(min(timeout, 5.0), timeout))
    try:
        response._content = response.raw.read(65536, decode_content=True) or b""
        if response.raw.read(1):
            response.close()
        else:
            response.raw.release_conn()
    except BaseException:
        response.close()
        raise
    return response
