"""Structured JSON logs with a correlation id that follows a request into Celery tasks.

The id comes from the ``X-Request-ID`` request header (when it is a sane token) or is generated, is
echoed back on the response, is attached to every log record, and travels with every Celery task
published while it is set (as the ``correlation_id`` message header).
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
    """One JSON object per line; ``extra={...}`` fields are kept as top-level keys."""

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
        return json.dumps(payload, default=str, ensure_ascii=False)


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
