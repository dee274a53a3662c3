"""The fast path for Meta's webhook POSTs: an ASGI app in front of Django for exactly two routes.

``POST /webhooks/whatsapp`` and ``POST /webhooks/messenger`` are the platform's hottest endpoints and
need none of Django's request machinery (sessions, CSRF, auth, messages): under daphne each Django
request pays a fresh thread for its sync context and a hop per middleware, which capped ingest near
100-200 requests/s on two cores. Here the raw body goes straight to the same
``services.webhook_answer`` the Django view calls (verify, route, store once, enqueue after commit)
on a pooled thread, and the answer has the same status and JSON body. Everything else, including
Meta's GET handshake, goes to Django unchanged.

The request's own query is its connection's health check: Django would run ``SELECT 1`` before every
request's first query (CONN_HEALTH_CHECKS), a database round trip per webhook; here a pooled
connection that went away (server restart, idle timeout) fails the request's query, is closed, and
the request runs once more on a fresh connection (storing is idempotent: ON CONFLICT DO NOTHING).
The work runs on this module's own thread pool, so those connections are only ever used here.

What the Django stack would have given and still holds here: the ``X-Request-ID`` correlation id
(honoured or generated, echoed, carried into the Celery tasks), JSON errors, the body size limit
(413 before reading an oversized declared body), the Prometheus counter, and a logged 500 on a bug.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection
from django.utils.datastructures import CaseInsensitiveMapping

from channels_app import services
from channels_app.adapters import graph_platforms
from config import metrics
from config.errors import error_body
from config.ingress import send_json
from config.logs import correlation_id, incoming_or_new_correlation_id
from tenants.ratelimit import scope_client_address

logger = logging.getLogger(__name__)

# One route per Graph platform of the adapter registry, with a trailing slash too, as the Django routes
# accept both: Meta posts exactly the configured URL.
PATHS = {f"/webhooks/{platform}{slash}": platform for platform in graph_platforms() for slash in ("", "/")}

BARE_PATH = "/webhooks/_bench/bare"
ASGIApp = Any


# Each thread keeps one database connection (CONN_MAX_AGE) for the webhooks it serves. Four, not
# more: with more threads contending for the interpreter lock, bench.webhook_ingest acknowledged
# fewer webhooks per second (8 threads: 1,457/s; 4: 1,559/s).
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")


def _answer(platform: str, body: bytes, headers: CaseInsensitiveMapping, source: str) -> tuple[int, dict[str, Any]]:
    if connection.connection is not None:
        connection.health_check_done = True  # type: ignore[attr-defined]  # our query is the check (docstring)
    try:
        try:
            return services.webhook_answer(platform=platform, body=body, headers=headers, source=source)
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or connection.is_usable():
                raise  # not a lost connection: a real error, answered 500
            logger.warning("webhook database connection was lost; retrying on a new one", extra={"platform": platform})
            connection.close()
            return services.webhook_answer(platform=platform, body=body, headers=headers, source=source)
    finally:
        # What Django's request_finished does: drop a connection past its age or after an error.
        close_old_connections()


class WebhookFastPath:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        platform = PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if platform is None and scope.get("path") == BARE_PATH and settings.WEBHOOK_BENCH_BARE_ENDPOINT:
            platform = "_bare"
        if platform is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = CaseInsensitiveMapping(
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        )
        cid = incoming_or_new_correlation_id(headers.get("X-Request-ID"))
        token = correlation_id.set(cid)
        try:
            status, body = await self._handle(platform, headers, receive, scope_client_address(scope))
        finally:
            correlation_id.reset(token)
        await send_json(send, status, body, [(b"x-request-id", cid.encode())])

    async def _handle(
        self, platform: str, headers: CaseInsensitiveMapping, receive: Any, source: str
    ) -> tuple[int, bytes]:
        limit = settings.WEBHOOK_MAX_BODY_BYTES
        try:
            declared = int(headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return _encoded(*services.webhook_too_large(platform=platform))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, _error("client_disconnected", "The client went away before the body arrived.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _encoded(*services.webhook_too_large(platform=platform))
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        if platform == "_bare":  # the ingest benchmark's baseline: same path, no work
            return 200, b'{"status": "ok"}'
        try:
            call = functools.partial(_answer, platform, b"".join(chunks), headers, source)
            context = contextvars.copy_context()  # the correlation id goes with the work
            answer = await asyncio.get_running_loop().run_in_executor(_executor, context.run, call)
        except Exception:
            logger.exception("webhook handling failed", extra={"platform": platform})
            metrics.incr("webhook_requests_total", platform=platform, outcome="internal_error")
            return 500, _error("internal_error", "Internal error; it has been logged.")
        return _encoded(*answer)


def _encoded(status: int, answer: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(answer).encode()


def _error(code: str, message: str) -> bytes:
    return json.dumps(error_body(code, message)).encode()
