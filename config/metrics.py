"""Prometheus metrics at GET /metrics (text format 0.0.4), shared by every process.

Counters live in one Redis hash, so daphne, every Celery worker and beat add to the same numbers
(``incr("webhook_requests_total", platform="whatsapp", outcome="invalid_signature")``). Gauges are
computed at scrape time by registered callables (queue depths, backlog sizes read from PostgreSQL).
A metrics failure never breaks the caller: it is logged and dropped.

The endpoint needs the admin API key (``Authorization: Bearer $ADMIN_API_KEY``, which Prometheus'
``authorization`` scrape setting sends) unless METRICS_PUBLIC=true.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import cast

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
Sample = tuple[str, dict[str, str], float]
_gauges: dict[str, tuple[str, Callable[[], Iterable[Sample]]]] = {}


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)


def _key() -> str:
    return f"{settings.REDIS_KEY_PREFIX}:metrics:counters"


def _series(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def incr(name: str, amount: float = 1, **labels: str) -> None:
    """Add to a counter (name should end in ``_total``). Never raises."""
    assert _NAME.match(name), name
    try:
        _client().hincrbyfloat(_key(), _series(name, labels), amount)
    except redis.RedisError as exc:
        logger.warning("metric dropped: redis unavailable", extra={"metric": name, "error": str(exc)})


def register_gauge(name: str, help_text: str, fn: Callable[[], Iterable[Sample]]) -> None:
    """``fn`` yields (name, labels, value) samples at scrape time."""
    _gauges[name] = (help_text, fn)


def render() -> str:
    lines: list[str] = []
    try:
        # A synchronous client: hgetall returns the hash itself (the stubs also allow an Awaitable).
        raw = cast(dict[bytes, bytes], _client().hgetall(_key()))
        counters = {k.decode(): float(v) for k, v in raw.items()}
    except redis.RedisError as exc:
        counters = {}
        lines.append(f"# counters unavailable: {type(exc).__name__}")
    seen: set[str] = set()
    for series in sorted(counters):
        name = series.split("{", 1)[0]
        if name not in seen:
            lines.append(f"# TYPE {name} counter")
            seen.add(name)
        lines.append(f"{series} {counters[series]:g}")
    for name, (help_text, fn) in sorted(_gauges.items()):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        try:
            for sample_name, labels, value in fn():
                lines.append(f"{_series(sample_name, labels)} {value:g}")
        except Exception as exc:
            logger.warning("gauge failed", extra={"gauge": name, "error": str(exc)})
            lines.append(f"# {name} unavailable: {type(exc).__name__}")
    return "\n".join(lines) + "\n"


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not getattr(settings, "METRICS_PUBLIC", False):
        from tenants.auth import key_from_request

        given = key_from_request(request)
        if not (
            settings.ADMIN_API_KEY and given and hmac.compare_digest(given.encode(), settings.ADMIN_API_KEY.encode())
        ):
            return HttpResponse("admin API key required\n", status=401, content_type="text/plain")
    return HttpResponse(render(), content_type="text/plain; version=0.0.4; charset=utf-8")


def _core_gauges() -> Iterable[Sample]:
    from django.db.models import Count

    from channels_app.models import InboundEvent
    from conversations.models import Conversation
    from events.models import Event

    for row in InboundEvent.objects.values("status", "kind").annotate(n=Count("id")):
        yield "metachat_inbound_events", {"status": row["status"], "kind": row["kind"]}, row["n"]
    for state_row in Conversation.objects.values("state").annotate(n=Count("id")):
        yield "metachat_conversations", {"state": state_row["state"]}, state_row["n"]
    yield "metachat_events_total_rows", {}, Event.objects.count()


register_gauge("metachat_core", "Inbound events by status, conversations by state, event log size", _core_gauges)
