"""The webhook deliveries' own lean HTTP/1.1 client (``WebhookConnection``), behind the egress guard.

The destination is checked by ``config.egress.resolve_checked`` when the socket is opened, on the
addresses DNS actually returned (so a name that resolves, or re-resolves, to a private address is
refused too), and the connection goes to the address that was checked. No proxies, no redirects.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from requests.utils import requote_uri

from config import egress

# --- tenant webhooks: a small kept-alive HTTP/1.1 client --------------------------------------------------
#
# Webhook deliveries are the hot path of the outbox: requests + urllib3 cost about 0.7 ms of CPU per
# POST (request preparation, header validation, pool bookkeeping, email-parser headers), more than
# everything else a delivery does together. This client writes the request in one send and parses
# only what a webhook answer needs (status, length / chunking, keep-alive), with the same guard:
# every new connection resolves the host, refuses disallowed addresses, and connects to the address
# it checked; no proxies, no redirects. Connections are kept alive per thread and origin, so DNS is
# resolved (and checked) once per connection, not once per request.

USER_AGENT = "metachat-webhooks/1"
MAX_ANSWER_BYTES = 65536
_MAX_HEADER_BYTES = 65536


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


def _tls_context() -> ssl.SSLContext:
    """Certificate and host name verified, against WEBHOOK_CA_BUNDLE or certifi's roots."""
    return _tls_context_for(settings.WEBHOOK_CA_BUNDLE)


@lru_cache(maxsize=4)
def _tls_context_for(ca_bundle: str) -> ssl.SSLContext:
    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())  # the trust store requests uses
    except ImportError:  # pragma: no cover
        return ssl.create_default_context()


class WebhookConnection:
    """One receiver origin (scheme, host, port) and at most one open connection to it."""

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        default_port = 443 if scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host
        self.host_header = name if port == default_port else f"{name}:{port}"
        self.sock: socket.socket | None = None
        self.rfile: Any = None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = self.rfile = None

    def _connect(self, timeout: float) -> None:
        try:
            addresses = egress.resolve_checked(self.host, self.port)
        except socket.gaierror:
            raise WebhookConnectionError("connection failed: the host name does not resolve") from None
        last_error: OSError | None = None
        for family, ip in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect((ip, self.port))
                if self.scheme == "https":
                    sock = _tls_context().wrap_socket(sock, server_hostname=self.host.strip("[]"))
            except TimeoutError:
                sock.close()
                raise WebhookTimeout() from None
            except ssl.SSLError as exc:
                sock.close()
                raise WebhookConnectionError(
                    f"connection failed: TLS error ({exc.reason or type(exc).__name__})"
                ) from None
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            self.sock, self.rfile = sock, sock.makefile("rb")
            return
        raise WebhookConnectionError(_os_error_reason(last_error))

    def _usable(self) -> bool:
        """A kept-alive connection the receiver has not closed meanwhile (nothing readable yet)."""
        if self.sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            readable = bool(poller.poll(0))
        except (OSError, ValueError):
            readable = True
        if readable:
            self.close()
            return False
        return True

    def post(self, target: str, *, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """POST once and read the answer (at most MAX_ANSWER_BYTES of its body). ``timeout`` bounds
        the connection (at most 5 s) and then the whole exchange."""
        lines = [f"POST {target} HTTP/1.1", f"Host: {self.host_header}", f"User-Agent: {USER_AGENT}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(lines) + "\r\n\r\n"
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError:
            head = text.encode()
        reused = self._usable()
        for attempt in (1, 2):
            if self.sock is None:
                self._connect(min(timeout, 5.0))
                reused = False
            deadline = time.monotonic() + timeout
            try:
                return self._exchange(head + body, deadline)
            except _ClosedBeforeAnswer:
                self.close()
                # A kept-alive connection closed by the receiver just as it was reused: once more
                # on a fresh one (the classic keep-alive race; the webhook-id lets receivers dedupe).
                if not reused or attempt == 2:
                    raise WebhookConnectionError("connection failed: connection closed without an answer") from None
            except TimeoutError:
                self.close()
                raise WebhookTimeout() from None
            except (WebhookProtocolError, WebhookTimeout):
                self.close()
                raise
            except OSError as exc:
                self.close()
                if reused and attempt == 1 and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                    continue
                raise WebhookConnectionError(_os_error_reason(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _remaining(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WebhookTimeout()
        assert self.sock is not None
        self.sock.settimeout(remaining)

    def _readline(self, deadline: float) -> bytes:
        self._remaining(deadline)
        line = self.rfile.readline(_MAX_HEADER_BYTES + 1)
        if len(line) > _MAX_HEADER_BYTES:
            raise WebhookProtocolError("answer header too long")
        return line

    def _exchange(self, request: bytes, deadline: float) -> Answer:
        assert self.sock is not None
        self._remaining(deadline)
        self.sock.sendall(request)
        while True:
            status_line = self._readline(deadline)
            if not status_line:
                raise _ClosedBeforeAnswer()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise WebhookProtocolError("the answer is not HTTP/1.x")
            version, status = parts[0], int(parts[1])
            fields: dict[bytes, bytes] = {}
            size = 0
            while True:
                line = self._readline(deadline)
                size += len(line)
                if size > _MAX_HEADER_BYTES:
                    raise WebhookProtocolError("answer headers too long")
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            break
        keep_alive = version == b"HTTP/1.1" and fields.get(b"connection", b"").lower() != b"close"
        content, complete = self._body(status, fields, deadline)
        if not (keep_alive and complete):
            self.close()
        return Answer(status_code=status, content=content)

    def _body(self, status: int, fields: dict[bytes, bytes], deadline: float) -> tuple[bytes, bool]:
        """The answer's body (first MAX_ANSWER_BYTES) and whether all of it was read (the connection
        can then be reused; a longer answer costs the connection, not the time to download it)."""
        if status in (204, 304):
            return b"", True
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self._readline(deadline)
                try:
                    length = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise WebhookProtocolError("invalid chunked answer") from None
                if length == 0:
                    while self._readline(deadline) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks), True
                if size + length > MAX_ANSWER_BYTES:
                    self._remaining(deadline)
                    chunks.append(self.rfile.read(MAX_ANSWER_BYTES - size))
                    return b"".join(chunks), False
                self._remaining(deadline)
                chunks.append(self.rfile.read(length))
                size += length
                self._readline(deadline)  # the CRLF after the chunk
        length_field = fields.get(b"content-length")
        if length_field is not None:
            try:
                length = int(length_field)
            except ValueError:
                raise WebhookProtocolError("invalid Content-Length") from None
            self._remaining(deadline)
            content = self.rfile.read(min(length, MAX_ANSWER_BYTES)) if length else b""
            return content, length <= MAX_ANSWER_BYTES and len(content) == length
        # Neither: the body ends when the receiver closes the connection.
        self._remaining(deadline)
        return self.rfile.read(MAX_ANSWER_BYTES), False


class _ClosedBeforeAnswer(Exception):
    pass


def _os_error_reason(exc: OSError | None) -> str:
    """A short reason without the URL (its path or query may carry a token)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection failed: connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection failed: connection reset"
    text = str(exc or "")
    for marker in ("No route to host", "Network is unreachable", "timed out"):
        if marker in text:
            return f"connection failed: {marker.lower()}"
    return f"connection failed: {type(exc).__name__}"


_MAX_CONNECTIONS_PER_THREAD = 64
_local = threading.local()


def webhook_connection(url: str) -> tuple[WebhookConnection, str]:
    """This thread's connection to ``url``'s origin (created on first use) and the request target
    (path and query). Drains of one thread run one at a time, so a connection is never shared."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise egress.EgressRefused("the URL must be http:// or https:// with a host name")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # The address check depends on the setting: a connection opened under another value is not reused.
    key = (parts.scheme, parts.hostname, port, bool(settings.EGRESS_ALLOW_PRIVATE_TARGETS))
    pool: dict[tuple[str, str, int, bool], WebhookConnection] | None = getattr(_local, "webhook_connections", None)
    if pool is None:
        pool = _local.webhook_connections = {}
    connection = pool.pop(key, None)
    if connection is None:
        connection = WebhookConnection(parts.scheme, parts.hostname, port)
        if len(pool) >= _MAX_CONNECTIONS_PER_THREAD:
            oldest = next(iter(pool))
            pool.pop(oldest).close()
    pool[key] = connection  # most recently used last
    target = requote_uri(parts.path or "/")
    if parts.query:
        target += "?" + requote_uri(parts.query)
    return connection, target
