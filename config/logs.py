"""Structured JSON logs, an access log, and one correlation id per inbound message.

The id comes from the ``X-Request-ID`` request header (when it is a sane token) or is generated. For
an HTTP request ``AccessLogMiddleware`` (the outermost ASGI layer) chooses it, so everything under it
sees the same id: Meta's webhook fast path, Django's middleware and views, and Django's own
``django.request`` lines (written after the middleware chain has returned). It is echoed back on the
response, attached to every log record, stored on the rows the request writes (inbound events,
events), and travels with every Celery task published while it is set, as the message header
``metachat_correlation_id`` (not Celery's ``correlation_id``, which a worker overwrites with the task
id). A worker restores it before the task runs; the turn pipeline switches to the id stored on the
inbound message it answers; outbound calls carry it (``X-Request-ID`` to the Graph API and to tenant
webhooks, the AMQP ``correlation_id`` property on RabbitMQ).

Every line is one JSON object: the formatter here, Celery's logging left to Django's configuration
(``setup_logging``), the worker's banner, uncaught exceptions (``sys.excepthook``, thread hooks) and
drf-spectacular's warnings and Python warnings routed through logging.

Credentials never reach a log line: every record the JSON formatter writes (message, extra fields,
the ``request`` Django attaches to its 4xx/5xx warnings, tracebacks) goes through ``redact``, which
replaces the values of sensitive query-string parameters (``hub.verify_token=``, ``api_key=``,
``access_token=``, ...) and sensitive headers (Authorization, X-API-Key, X-Hub-Signature*, Cookie)
with ``***``, wherever they appear: a URL, a header dict, the repr of a request.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from celery import signals
from django.http import HttpRequest, HttpResponse
from django.utils.functional import LazyObject

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

# The Celery message header carrying the id. Celery's own ``correlation_id`` is the task id: a worker
# sets its request's correlation_id from the message property, whatever the headers said.
TASK_HEADER = "metachat_correlation_id"
# The HTTP header the id arrives in and leaves in (responses, Graph API calls, tenant webhooks).
HTTP_HEADER = "X-Request-ID"

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "correlation_id",
}


REDACTED = "***"
# Query parameters whose values are credentials: any name ending in token/key/secret/password/signature
# (hub.verify_token, access_token, api_key, client_secret, ...) and the bare short forms.
_SENSITIVE_PARAM = re.compile(
    r"(?i)(?<![\w.\-])([\w.\-]*(?:token|api[_\-]?key|secret|passw(?:or)?d|signature)|key|sig|pwd)=[^&\s\"'<>\\#]*"
)
# Headers whose values are credentials, as a WSGI/ASGI name, an HTTP name or a dict key; the value runs
# to the end of the quoted string or the line.
_SENSITIVE_HEADER = re.compile(
    r"(?i)(?<![\w\-])((?:HTTP_)?(?:(?:proxy[_\-])?authorization|x[_\-]api[_\-]key|x[_\-]hub[_\-]signature(?:[_\-]256)?"
    r"|x[_\-]metachat[_\-]signature|(?:set[_\-])?cookie))(['\"]?\s*[:=]\s*(?:b?['\"])?)[^'\"\\\r\n]+"
)
_SENSITIVE_KEY = re.compile(
    r"(?i)^(?:HTTP_)?(?:(?:proxy[_\-])?authorization|x[_\-]api[_\-]key|x[_\-]hub[_\-]signature(?:[_\-]256)?"
    r"|x[_\-]metachat[_\-]signature|(?:set[_\-])?cookie|[\w.\-]*(?:token|api[_\-]?key|secret|passw(?:or)?d))$"
)


# Substrings without which neither pattern can match: most log text is skipped in a few hundred ns.
_HEADER_WORDS = ("authorization", "api_key", "api-key", "signature", "cookie")


def redact_text(text: str) -> str:
    """``text`` with the values of credential query parameters and headers replaced by ``***``."""
    if "=" in text:
        text = _SENSITIVE_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    lowered = text.lower()
    if any(word in lowered for word in _HEADER_WORDS):
        text = _SENSITIVE_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return text


def redact(value: Any) -> Any:
    """A JSON-ready copy of ``value`` with credentials redacted: strings through ``redact_text``,
    dict entries under a sensitive name replaced whole, anything else by its redacted ``str``."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {
            str(k): REDACTED if _SENSITIVE_KEY.match(str(k)) and v not in (None, "") else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return redact_text(str(value))


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def incoming_or_new_correlation_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a safe token, else a fresh id."""
    return incoming if incoming and _SAFE_ID.match(incoming) else new_correlation_id()


def get_correlation_id() -> str | None:
    return correlation_id.get()


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields are kept as top-level keys. Credentials are
    redacted from every field (see ``redact``), except on records marked ``_clean`` (the access log,
    whose fields are a route pattern, numbers and ids). Configuring it also sends uncaught exceptions
    and drf-spectacular's warnings through logging (``capture_stray_output``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        capture_stray_output()

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = (
            getattr(record, "correlation_id", None)
            or correlation_id.get()
            # django.request's 4xx/5xx lines are written once the middleware chain has returned.
            or getattr(getattr(record, "request", None), "correlation_id", None)
        )
        if cid:
            payload["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            payload["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        if getattr(record, "_clean", False):
            return json.dumps(payload, ensure_ascii=False)
        return json.dumps(redact(payload), ensure_ascii=False)


# --- the access log -----------------------------------------------------------------------------------

access_logger = logging.getLogger("metachat.access")
# What the layers under the access log learn about the request: its route and tenant.
_access_entry: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("access_entry", default=None)


def note_request(*, route: str | None = None, tenant_id: Any = None, routed: bool = False) -> None:
    """Tell the access log the route pattern or the tenant of the request being served (if any);
    ``routed``: Django resolved the path (a ``None`` route then means that no pattern matched)."""
    entry = _access_entry.get()
    if entry is not None:
        entry["routed"] = entry["routed"] or routed
        if route is not None:
            entry["route"] = route
        if tenant_id is not None:
            entry["tenant_id"] = str(tenant_id)


@functools.lru_cache(maxsize=512)
def _route_of(path: str) -> str | None:
    """The URL pattern of a path Django did not route itself (the webhook fast path, a 413 answered
    before Django): resolved once per distinct path."""
    from django.urls import Resolver404, resolve

    try:
        return resolve(path).route or None
    except Resolver404:
        return None


def _request_id_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return value.decode("latin-1")
    return None


class AccessLogMiddleware:
    """ASGI: one JSON line per HTTP request (``metachat.access``: method, route pattern, status,
    latency in ms, tenant when known, correlation id), and the request's correlation id chosen here,
    for every layer below. A generated id replaces a missing or unusable ``X-Request-ID`` header in
    the scope, so the layers below that read the header see the same id."""

    def __init__(self, app: Any, *, enabled: bool = True):
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = scope.get("headers") or []
        incoming = _request_id_header(headers)
        cid = incoming_or_new_correlation_id(incoming)
        if cid != incoming:
            kept = [(k, v) for k, v in headers if k.lower() != b"x-request-id"]
            scope = {**scope, "headers": [*kept, (b"x-request-id", cid.encode())]}
        entry: dict[str, Any] = {"status": 500, "route": None, "routed": False, "tenant_id": None}
        tokens = (correlation_id.set(cid), _access_entry.set(entry))

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if self.enabled:
                self._log(scope, entry, started)
            _access_entry.reset(tokens[1])
            correlation_id.reset(tokens[0])

    @staticmethod
    def _log(scope: dict[str, Any], entry: dict[str, Any], started: float) -> None:
        route = entry["route"] if entry["routed"] else _route_of(scope.get("path", ""))
        method = scope.get("method", "")
        access_logger.info(
            "%s %s %s",
            method,
            route or "-",
            entry["status"],
            extra={
                "method": method,
                "route": route,
                "status": entry["status"],
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "tenant_id": entry["tenant_id"],
                "_clean": True,
            },
        )


class RequestIdMiddleware:
    """Django: the correlation id for the request (the access log's, from the header it set; its own
    when Django is served without it, as in tests), echoed as X-Request-ID; the route pattern and
    tenant handed to the access log. Works for sync and async."""

    header = "HTTP_X_REQUEST_ID"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        cid = incoming_or_new_correlation_id(request.META.get(self.header, ""))
        token = correlation_id.set(cid)
        request.correlation_id = cid  # type: ignore[attr-defined]
        try:
            response = self.get_response(request)
        finally:
            correlation_id.reset(token)
        response[HTTP_HEADER] = cid
        if _access_entry.get() is not None:
            note_request(route=_route_pattern(request), tenant_id=_tenant_of(request), routed=True)
        return response


def _route_pattern(request: HttpRequest) -> str | None:
    match = getattr(request, "resolver_match", None)
    return (match.route or None) if match is not None else None


def _tenant_of(request: HttpRequest) -> Any:
    """The tenant in the URL, else the tenant of the API key that authenticated the request."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.kwargs.get("tenant_id"):
        return match.kwargs["tenant_id"]
    user = request.__dict__.get("user")  # DRF's principal; never evaluate the session's lazy user
    if user is None or isinstance(user, LazyObject):
        return None
    tenant = getattr(user, "tenant", None)
    return getattr(tenant, "pk", None)


# --- Celery -------------------------------------------------------------------------------------------


@signals.before_task_publish.connect
def _attach_correlation_id(headers: dict | None = None, **_: Any) -> None:
    cid = correlation_id.get()
    if cid and headers is not None and TASK_HEADER not in headers:
        headers[TASK_HEADER] = cid


@signals.task_prerun.connect
def _restore_correlation_id(task: Any = None, **_: Any) -> None:
    """The id the task was published with (custom message headers become request attributes), else
    a fresh one (a beat task, a message from elsewhere)."""
    cid = getattr(task.request, TASK_HEADER, None) if task is not None else None
    correlation_id.set(cid if isinstance(cid, str) and _SAFE_ID.match(cid) else new_correlation_id())


@signals.task_postrun.connect
def _clear_correlation_id(**_: Any) -> None:
    correlation_id.set(None)


@signals.setup_logging.connect
def _keep_django_logging(loglevel: Any = None, **_: Any) -> None:
    """A worker keeps the JSON logging Django configured (settings.LOGGING) instead of Celery's own
    text format on a hijacked root logger. ``--loglevel`` applies to Celery's own loggers (task
    received/succeeded lines at INFO); the application's follow LOG_LEVEL."""
    if loglevel:
        logging.getLogger("celery").setLevel(loglevel)


@signals.celeryd_init.connect
def _worker_logs_json_from_the_start(instance: Any = None, **_: Any) -> None:
    """Django's logging configured before the worker's first words (its superuser warning comes
    before Celery's Django fix-up sets Django up), and its start-up banner (several lines of text on
    stdout) as one JSON line."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    worker_module = sys.modules.get("celery.apps.worker")
    if worker_module is not None:
        worker_module.safe_say = _say_as_json  # type: ignore[attr-defined]
    if instance is None:
        return

    def emit_banner() -> None:
        logging.getLogger("celery.worker").info(
            "celery worker starting",
            extra={
                "hostname": instance.hostname,
                "queues": sorted(instance.app.amqp.queues.keys()),
                "concurrency": instance.concurrency,
                "pool": getattr(instance.pool_cls, "__module__", str(instance.pool_cls)),
            },
        )

    instance.emit_banner = emit_banner


def _say_as_json(msg: str, f: Any = None) -> None:
    """Celery's ``safe_say`` (its shutdown notices, written from a signal handler): one JSON line,
    formatted without taking a logging lock and written with a single ``os.write``."""
    record = logging.LogRecord("celery.worker", logging.WARNING, __file__, 0, msg.strip(), None, None)
    line = (JsonFormatter().format(record) + "\n").encode()
    stream: Any = f or sys.__stdout__
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(stream.fileno(), line)


# --- what would otherwise reach stdout/stderr as text -------------------------------------------------

_uncaught = logging.getLogger("metachat.uncaught")
_captured = False


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, *, thread: str | None = None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt) or _is_a_terminal(sys.stderr):
        sys.__excepthook__(exc_type, exc, tb)  # a person reads it (manage.py shell, a command typed)
        return
    # One JSON line on stderr, where a crash is looked for (not through the stdout handler).
    where = f" in thread {thread}" if thread else ""
    record = _uncaught.makeRecord(
        _uncaught.name, logging.CRITICAL, __file__, 0, "uncaught %s%s: %s", (exc_type.__name__, where, exc),
        (exc_type, exc, tb),
    )  # fmt: skip
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(JsonFormatter().format(record) + "\n")
        sys.stderr.flush()


def _is_a_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _log_uncaught(
        args.exc_type,
        args.exc_value or args.exc_type(),
        args.exc_traceback,
        thread=args.thread.name if args.thread else "?",
    )


def _schema_warning(self: Any, msg: str, severity: str) -> None:
    """drf-spectacular's GeneratorStats.emit, as a log line instead of a print to stderr (the
    counts --fail-on-warn and the schema test read are kept)."""
    cache = self._warn_cache if severity == "warning" else self._error_cache
    source, breadcrumbs = self._get_current_trace()
    key = f"{source} [{breadcrumbs}] {msg}"
    if not self.silent and key not in cache:
        level = logging.WARNING if severity == "warning" else logging.ERROR
        logging.getLogger("drf_spectacular").log(
            level, "schema %s: %s", severity, msg, extra={"source": source, "breadcrumbs": breadcrumbs}
        )
    cache[key] += 1


def _schema_summary(self: Any) -> None:
    if not self.silent and (self._warn_cache or self._error_cache):
        logging.getLogger("drf_spectacular").warning(
            "schema generation summary",
            extra={"warnings": sum(self._warn_cache.values()), "errors": sum(self._error_cache.values())},
        )


def capture_stray_output() -> None:
    """Python warnings (logger ``py.warnings``), uncaught exceptions (main thread and others) and
    drf-spectacular's warnings as log records."""
    global _captured
    if _captured:
        return
    _captured = True
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    try:
        from drf_spectacular import drainage
    except ImportError:  # pragma: no cover
        return
    drainage.GeneratorStats.emit = _schema_warning  # type: ignore[method-assign]
    drainage.GeneratorStats.emit_summary = _schema_summary  # type: ignore[method-assign]
