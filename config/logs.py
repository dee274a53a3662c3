"""Structured JSON logs with a correlation id that follows a request into Celery tasks.

The id comes from the ``X-Request-ID`` request header (when it is a sane token) or is generated, is
echoed back on the response, is attached to every log record, and travels with every Celery task
published while it is set (as the ``correlation_id`` message header).

Credentials never reach a log line: every record the JSON formatter writes (message, extra fields,
the ``request`` Django attaches to its 4xx/5xx warnings, tracebacks) goes through ``redact``, which
replaces the values of sensitive query-string parameters (``hub.verify_token=``, ``api_key=``,
``access_token=``, ...) and sensitive headers (Authorization, X-API-Key, X-Hub-Signature*, Cookie)
with ``***``, wherever they appear: a URL, a header dict, the repr of a request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from celery import signals
from django.http import HttpRequest, HttpResponse

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

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
    redacted from every field (see ``redact``)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None) or correlation_id.get()
        if cid:
            payload["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            payload["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(redact(payload), ensure_ascii=False)


class RequestIdMiddleware:
    """Sets the correlation id for the request, echoes it as X-Request-ID. Works for sync and async."""

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
        response["X-Request-ID"] = cid
        return response


@signals.before_task_publish.connect
def _attach_correlation_id(headers: dict | None = None, **_: Any) -> None:
    cid = correlation_id.get()
    if cid and headers is not None and "correlation_id" not in headers:
        headers["correlation_id"] = cid


@signals.task_prerun.connect
def _restore_correlation_id(task: Any = None, **_: Any) -> None:
    cid = getattr(task.request, "correlation_id", None) if task is not None else None
    if not cid and task is not None:
        cid = (getattr(task.request, "headers", None) or {}).get("correlation_id")
    correlation_id.set(cid or new_correlation_id())


@signals.task_postrun.connect
def _clear_correlation_id(**_: Any) -> None:
    correlation_id.set(None)
