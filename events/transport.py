"""Tenant webhook requests over urllib3's connection pools, behind the egress guard.

The pools are config.egress's guarded ones: every new connection resolves the host, refuses
disallowed addresses (``config.egress.resolve_checked``, on the addresses DNS actually returned) and
connects to the address it checked; TLS verifies the certificate and the original host name against
WEBHOOK_CA_BUNDLE or certifi's roots. No proxies, no redirects, at most MAX_ANSWER_BYTES of an answer.
Connections are kept alive per thread and origin, so DNS is resolved (and checked) once per
connection, not once per request.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from django.conf import settings
from requests.utils import requote_uri
from urllib3 import exceptions as urllib3_errors
from urllib3.connectionpool import HTTPConnectionPool

from config import egress

USER_AGENT = "metachat-webhooks/1"
MAX_ANSWER_BYTES = 65536
_READ_SIZE = 16384


class WebhookTimeout(Exception):
    """No connection or no complete answer within the timeout."""


class WebhookConnectionError(Exception):
    """The receiver could not be reached or closed the connection; ``reason`` is safe to store (no URL)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebhookProtocolError(Exception):
    """The receiver answered something that is not HTTP/1.x."""


@dataclass
class Answer:
    status_code: int
    content: bytes


class WebhookReceiver:
    """One receiver origin's connection pool of this thread."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def post(self, target: str, *, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """POST once and read the answer (at most MAX_ANSWER_BYTES of its body). ``timeout`` bounds
        the connection (at most 5 s), each read, and the reading of the body as a whole."""
        deadline = time.monotonic() + timeout
        response = self._send(target, body=body, headers=headers, timeout=timeout)
        chunks: list[bytes] = []
        size = 0
        try:
            # urllib3 (like http.client) reads an unparseable Content-Length as "until the connection closes".
            length = response.headers.get("Content-Length")
            if length is not None and not length.strip().isdigit():
                raise WebhookProtocolError("invalid Content-Length")
            while size < MAX_ANSWER_BYTES:
                if time.monotonic() > deadline:
                    raise WebhookTimeout()
                chunk = response.read(min(_READ_SIZE, MAX_ANSWER_BYTES - size), decode_content=False)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            complete = size < MAX_ANSWER_BYTES or not response.read(1, decode_content=False)
        except urllib3_errors.HTTPError as exc:
            response.close()
            raise _translated(exc) from None
        except BaseException:
            response.close()
            raise
        if not complete:
            response.close()  # a longer answer costs the connection, not the time to download it
        response.release_conn()
        return Answer(status_code=response.status, content=b"".join(chunks))

    def _send(self, target: str, *, body: bytes, headers: dict[str, str], timeout: float) -> urllib3.BaseHTTPResponse:
        for attempt in (1, 2):
            opened = self.pool.num_connections
            try:
                return self.pool.urlopen(
                    "POST",
                    target,
                    body=body,
                    headers={"User-Agent": USER_AGENT, **headers},
                    timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
                    retries=False,
                    redirect=False,
                    preload_content=False,
                    assert_same_host=False,
                )
            except urllib3_errors.ProtocolError as exc:
                # A kept-alive connection closed by the receiver just as it was reused: once more on a
                # fresh one (the classic keep-alive race; the webhook-id lets receivers dedupe).
                reused = self.pool.num_connections == opened
                closed = isinstance(exc.args[-1], http.client.RemoteDisconnected | ConnectionError)
                if not (reused and closed and attempt == 1):
                    raise _translated(exc) from None
            except urllib3_errors.HTTPError as exc:
                raise _translated(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover


def _translated(exc: Exception) -> Exception:
    """urllib3's error as a timeout, an unreachable receiver (a reason without the URL: its path or
    query may carry a token) or a malformed answer."""
    if isinstance(exc, urllib3_errors.NameResolutionError):
        return WebhookConnectionError("connection failed: the host name does not resolve")
    if isinstance(exc, urllib3_errors.NewConnectionError):  # a ConnectTimeoutError subclass, but not a timeout
        return WebhookConnectionError(_reason(str(exc)))
    if isinstance(exc, urllib3_errors.ConnectTimeoutError | urllib3_errors.ReadTimeoutError):
        return WebhookTimeout()
    if isinstance(exc, urllib3_errors.SSLError):
        cause = next((arg for arg in exc.args if isinstance(arg, ssl.SSLError)), None)
        reason = (cause.reason if cause is not None else None) or type(cause or exc).__name__
        return WebhookConnectionError(f"connection failed: TLS error ({reason})")
    if isinstance(exc, urllib3_errors.ProtocolError):
        cause = exc.args[-1]
        if isinstance(cause, http.client.RemoteDisconnected):
            return WebhookConnectionError("connection failed: connection closed without an answer")
        if isinstance(cause, http.client.BadStatusLine):
            return WebhookProtocolError("the answer is not HTTP/1.x")
        if isinstance(cause, OSError):
            return WebhookConnectionError(_reason(f"{type(cause).__name__} {cause}"))
        return WebhookProtocolError(f"invalid answer ({type(cause).__name__})")
    return WebhookConnectionError(_reason(str(exc)))


def _reason(text: str) -> str:
    for marker in ("Connection refused", "Connection reset", "No route to host", "Network is unreachable", "timed out"):
        if marker in text:
            return f"connection failed: {marker.lower()}"
    if "ConnectionResetError" in text or "BrokenPipeError" in text:
        return "connection failed: connection reset"
    return "connection failed: the receiver is unreachable"


_local = threading.local()


def _pools() -> urllib3.PoolManager:
    """This thread's pools: a drain's requests run one after another, so a connection is never shared
    and whether a failed request went over a reused connection is known. The address check and the
    trust store depend on settings: a connection opened under other values is not reused."""
    key = (settings.WEBHOOK_CA_BUNDLE, bool(settings.EGRESS_ALLOW_PRIVATE_TARGETS))
    managers: dict[tuple[str, bool], urllib3.PoolManager] = _local.__dict__.setdefault("managers", {})
    manager = managers.get(key)
    if manager is None:
        manager = urllib3.PoolManager(
            num_pools=64, maxsize=1, block=False, retries=False, ca_certs=key[0] or certifi.where()
        )
        manager.pool_classes_by_scheme = egress.GUARDED_POOL_CLASSES
        managers[key] = manager
    return manager


def webhook_connection(url: str) -> tuple[WebhookReceiver, str]:
    """This thread's pool for ``url``'s origin and the request target (path and query)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise egress.EgressRefused("the URL must be http:// or https:// with a host name")
    pool = _pools().connection_from_host(parts.hostname, parts.port, parts.scheme)
    target = requote_uri(parts.path or "/")
    if parts.query:
        target += "?" + requote_uri(parts.query)
    return WebhookReceiver(pool), target
