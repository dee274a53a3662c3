"""Ingress: what a request may bring, bounded before and while it is read.

One policy, ``body_limit``: webhooks get WEBHOOK_MAX_BODY_BYTES; the two document upload routes get
KNOWLEDGE_MAX_UPLOAD_BYTES (plus the multipart framing) but only when the request carries credentials
(an API key header, or the admin's session cookie); every other route, and any route without
credentials, gets DATA_UPLOAD_MAX_MEMORY_SIZE. A body over its limit is answered 413, a request not
sent in time 408, both as the JSON error shape, and the connection is closed.

It is enforced twice because of how daphne works. Twisted reads a whole request body (into memory
under 100 kB, into a temporary file above) before daphne calls the ASGI application at all, then
queues all of it for the application in one go: an ASGI middleware alone would see a 2 GB body only
after it had been written to disk and copied into memory, and a body that never finishes never
reaches it. So ``install_daphne_guard`` makes daphne's request class check ``Content-Length`` as soon
as the headers are in, count the bytes as they arrive, and hold the client to a read deadline:
REQUEST_READ_TIMEOUT_SECONDS, extended by a second for every REQUEST_READ_MIN_BYTES_PER_SECOND bytes
received, as Apache's mod_reqtimeout does (a slow upload that moves finishes, a stalled or trickling
one does not). ``BodyLimitMiddleware`` applies the same policy at the ASGI level, where a server streams the
body to the application (uvicorn, hypercorn, tests calling ``config.asgi.application``).

Inside Django: ``BoundedJSONParser`` answers 400 for JSON nested deeper than JSON_MAX_DEPTH or holding
a NUL character (PostgreSQL stores neither in text nor in jsonb), ``RejectNulMiddleware`` does the same
for the path and query string, and ``CappedTemporaryFileUploadHandler`` writes an upload to a
temporary file as it arrives and stops it at its cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

from config import metrics
from config.errors import ApiError, error_body, json_error

logger = logging.getLogger(__name__)

ASGIApp = Any

# Room for the multipart boundaries, part headers and the optional title field around the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_UPLOAD_PATHS = re.compile(r"/api/tenants/[0-9a-fA-F-]{32,36}/documents/?|/admin/knowledge/document/add/")
_MEDIA_SEND_PATH = re.compile(r"/api/tenants/[0-9a-fA-F-]{32,36}/conversations/[0-9a-fA-F-]{32,36}/media/?")


def body_limit(path: str, header: Callable[[bytes], bytes | None]) -> int:
    """The most bytes a request body to ``path`` may have; ``header(b"lowercase-name")`` reads a header."""
    if path.startswith("/webhooks/"):
        return settings.WEBHOOK_MAX_BODY_BYTES
    if _UPLOAD_PATHS.fullmatch(path) and _has_credentials(header):
        return settings.KNOWLEDGE_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES
    if _MEDIA_SEND_PATH.fullmatch(path) and _has_credentials(header):
        return settings.CHANNEL_MEDIA_SEND_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def _has_credentials(header: Callable[[bytes], bytes | None]) -> bool:
    """Whether the request names a caller at all (checked later): an API key or an admin session."""
    if header(b"x-api-key") or header(b"authorization"):
        return True
    return f"{settings.SESSION_COOKIE_NAME}=".encode() in (header(b"cookie") or b"")


def _too_large(limit: int) -> tuple[int, dict[str, Any]]:
    return 413, error_body("payload_too_large", f"The request body is over {limit} bytes.", {"limit": limit})


def _too_slow() -> tuple[int, dict[str, Any]]:
    return 408, error_body("request_timeout", "The request was not sent in time.")


def _refused(path: str, status: int, declared: int | None) -> None:
    reason = "body_too_large" if status == 413 else "read_timeout"
    metrics.incr("http_requests_refused_total", reason=reason)
    extra = {"path": path, "status": status, "declared_bytes": declared}
    logger.warning("request refused before the application", extra=extra)


def _read_deadline(started: float, received: int) -> float:
    return started + settings.REQUEST_READ_TIMEOUT_SECONDS + received / settings.REQUEST_READ_MIN_BYTES_PER_SECOND


# --- daphne (Twisted): at the socket, before anything is buffered ---------------------------------------


# How long a refused client may go on sending (dropped) before the connection is cut.
LINGER_SECONDS = 2.0


def _discard(data: bytes) -> None:
    pass


def install_daphne_guard() -> None:
    """Make daphne build its requests from a bounded subclass (its factory reads this module global)."""
    from daphne import http_protocol

    if not getattr(http_protocol.WebRequest, "bounded", False):
        http_protocol.WebRequest = _bounded(http_protocol.WebRequest)


def _bounded(web_request: type) -> type:
    class BoundedWebRequest(web_request):  # type: ignore[valid-type,misc]
        """daphne's request, refusing an oversized or late body before it is buffered."""

        bounded = True

        def __init__(self, *args: Any, **kwargs: Any):
            self._refused = False
            self._limit = 0
            self._received = 0
            self._declared: int | None = None
            self._linger_call: Any = None
            self._read_started = time.monotonic()
            super().__init__(*args, **kwargs)
            # Created at the request line: the deadline covers the headers and the body.
            self._deadline_call = self.channel.callLater(settings.REQUEST_READ_TIMEOUT_SECONDS, self._check_deadline)

        def gotLength(self, length: int | None) -> None:
            def header(name: bytes) -> bytes | None:
                values = self.requestHeaders.getRawHeaders(name)
                return values[0] if values else None

            raw_path = self.channel._path.decode("ascii", "replace")
            self._limit = body_limit(unquote(urlsplit(raw_path).path), header)
            self._declared = length
            if length is not None and length > self._limit:
                self._refuse(*_too_large(self._limit))
            super().gotLength(0 if self._refused else length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._received += len(data)
            if self._received > self._limit:
                self._refuse(*_too_large(self._limit))
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            self._cancel_deadline()
            if not self._refused:
                super().requestReceived(command, path, version)

        def connectionLost(self, reason: Any) -> None:
            self._cancel_deadline()
            self._cancel_linger()
            super().connectionLost(reason)

        def _check_deadline(self) -> None:
            self._deadline_call = None
            if self._refused or self.channel is None:
                return
            remaining = _read_deadline(self._read_started, self._received) - time.monotonic()
            if remaining > 0:
                self._deadline_call = self.channel.callLater(remaining, self._check_deadline)
            else:
                self._refuse(*_too_slow())

        def _cancel_deadline(self) -> None:
            if self._deadline_call is not None and self._deadline_call.active():
                self._deadline_call.cancel()
            self._deadline_call = None

        def _refuse(self, status: int, body: dict[str, Any]) -> None:
            """Answer at once; the rest of the body is never buffered. The write side closes after the
            answer while what the client still sends is read and dropped for a moment: closing with
            unread data would reset the connection, and the client could lose the answer."""
            self._refused = True
            self._cancel_deadline()
            channel = self.channel
            path = channel._path.decode("ascii", "replace") if getattr(channel, "_path", None) else ""
            _refused(urlsplit(path).path, status, self._declared)
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
            )
            channel.dataReceived = _discard
            channel.transport.write(head.encode() + payload)
            channel.transport.loseWriteConnection()
            self._linger_call = channel.callLater(LINGER_SECONDS, channel.transport.abortConnection)

        def _cancel_linger(self) -> None:
            if self._linger_call is not None and self._linger_call.active():
                self._linger_call.cancel()
            self._linger_call = None

    return BoundedWebRequest


# --- ASGI: the same policy where the server streams the body -------------------------------------------


class BodyLimitMiddleware:
    """Refuses a declared oversized body before reading it, cuts a streamed one at the limit, and
    answers 408 when the body does not arrive in time; the application then sees a disconnect."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in _POLICY_HEADERS:  # ASGI header names are lowercase
                headers.setdefault(key, value)
        path = scope["path"]
        limit = body_limit(path, headers.get)
        declared: int | None = None
        if b"content-length" in headers:
            try:
                declared = int(headers[b"content-length"])
            except ValueError:
                await _send_refusal(send, 400, error_body("invalid_request", "Content-Length is not a number."))
                return
            if declared > limit:
                _refused(path, 413, declared)
                await _send_refusal(send, *_too_large(limit))
                return
        await _BoundedExchange(path, limit, declared, send).run(self.app, scope, receive)


_POLICY_HEADERS = frozenset({b"content-length", b"x-api-key", b"authorization", b"cookie"})


class _BoundedExchange:
    """One request's body reads, counted and held to the read deadline (one timer per read, which
    cancels the reading task when it fires: cheaper than asyncio.timeout on the webhooks' hot path)."""

    def __init__(self, path: str, limit: int, declared: int | None, send: Any):
        self.path = path
        self.limit = limit
        self.declared = declared
        self.send = send
        self.received = 0
        self.body_done = False
        self.started = time.monotonic()
        self.response_started = False
        self.refused = False
        self.expired = False

    async def run(self, app: ASGIApp, scope: dict, receive: Any) -> None:
        async def bounded_receive() -> dict[str, Any]:
            if self.refused:
                return {"type": "http.disconnect"}
            if self.body_done:
                return await receive()  # only a disconnect can come now: no deadline on it
            task = asyncio.current_task()
            remaining = _read_deadline(self.started, self.received) - time.monotonic()
            timer = asyncio.get_running_loop().call_later(max(0.0, remaining), self._expire, task)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not self.expired or task is None:
                    raise
                task.uncancel()  # our own cancellation, handled here: not a cancellation of the request
                return await self._refuse(*_too_slow())
            finally:
                timer.cancel()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    return await self._refuse(*_too_large(self.limit))
                self.body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if self.refused:
                return  # the client already has its 413/408
            if message["type"] == "http.response.start":
                self.response_started = True
            await self.send(message)

        await app(scope, bounded_receive, guarded_send)

    def _expire(self, task: asyncio.Task | None) -> None:
        if task is not None:
            self.expired = True
            task.cancel()

    async def _refuse(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        self.refused = True
        _refused(self.path, status, self.declared)
        if not self.response_started:
            await _send_refusal(self.send, status, body)
        return {"type": "http.disconnect"}


async def _send_refusal(send: Any, status: int, body: dict[str, Any]) -> None:
    # A refusal leaves the rest of the body unread: the connection cannot carry another request.
    await send_json(send, status, json.dumps(body).encode(), [(b"connection", b"close")])


async def send_json(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """A whole JSON answer over ASGI: its content type and length, then ``headers``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- Django and DRF: what a parsed request may contain --------------------------------------------------


class RejectNulMiddleware:
    """A NUL character in the path or query string is refused with 400 before any view can pass it to
    PostgreSQL, which cannot store it (the query would fail with a 500)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        bad = {name: ["contains a NUL character"] for name, value in request.GET.lists() if _has_nul([name, *value])}
        if "\x00" in request.path:
            bad["path"] = ["contains a NUL character"]
        if bad:
            return json_error(400, "validation_error", "Text may not contain NUL characters (%00).", bad)
        return self.get_response(request)


def _has_nul(texts: list[str]) -> bool:
    return any("\x00" in text for text in texts)


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with a nesting bound and no NUL characters, both answered 400.

    The standard library raises RecursionError (a 500) around a thousand levels; anything deeper than
    JSON_MAX_DEPTH is refused here so no recursive validator or serializer further on can hit it."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {settings.JSON_MAX_DEPTH} levels.") from None
        check_json_value(data)
        return data


def check_json_value(data: Any) -> None:
    """Raise (400) when ``data`` nests deeper than JSON_MAX_DEPTH or holds a NUL in a key or string."""
    max_depth = settings.JSON_MAX_DEPTH
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ValidationError({where or "body": ["contains a NUL character"]})
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > max_depth:
            raise ParseError(f"JSON parse error - nested deeper than {max_depth} levels.")
        if isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if "\x00" in key:
                    raise ValidationError({path: ["the key contains a NUL character"]})
                stack.append((item, depth + 1, path))
        else:
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))


class CappedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Streams every uploaded file of a request to a temporary file (never whole in memory) and stops
    the upload, removing what was written, once the files together pass ``limit`` bytes: 413."""

    def __init__(self, request: HttpRequest, *, limit: int):
        super().__init__(request)
        self.limit = limit
        self.total = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.total += len(raw_data)
        if self.total > self.limit:
            self.file.close()  # a NamedTemporaryFile: closing it deletes it
            raise ApiError(413, "payload_too_large", f"The upload is over {self.limit} bytes.", {"limit": self.limit})
        return super().receive_data_chunk(raw_data, start)
