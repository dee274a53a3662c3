"""Prometheus metrics at GET /metrics (text format 0.0.4), shared by every process.

Counters live in one Redis hash, so daphne, every Celery worker and beat add to the same numbers
(``incr("webhook_requests_total", platform="whatsapp", outcome="invalid_signature")``). Each process
adds up its increments in memory and a background thread writes them in one pipelined round trip
every METRICS_FLUSH_SECONDS (1 s; 0 writes each increment at once), so a hot path such as the
webhook receiver pays a dict update rather than a Redis round trip per request; a scrape flushes
the scraping process first and sees the others' counts at most that interval late. Gauges are
computed at scrape time by callables each app registers from its ``ready()`` (its own tables' backlog
sizes), so this module knows no app.
A metrics failure never breaks the caller: it is logged and dropped.

The endpoint needs the admin API key (``Authorization: Bearer $ADMIN_API_KEY``, which Prometheus'
``authorization`` scrape setting sends) unless METRICS_PUBLIC=true.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import cast

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from config.redis_clients import redis_client

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
Sample = tuple[str, dict[str, str], float]
_gauges: dict[str, tuple[str, Callable[[], Iterable[Sample]]]] = {}


def _key() -> str:
    return f"{settings.REDIS_KEY_PREFIX}:metrics:counters"


def _series(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Buffer:
    """Increments not written to Redis yet, with the thread that writes them (one per process)."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pid = 0
        self.thread: threading.Thread | None = None

    def add(self, series: str, amount: float, interval: float) -> None:
        with self.lock:
            self.counts[series] = self.counts.get(series, 0.0) + amount
            if self.pid != os.getpid() or self.thread is None or not self.thread.is_alive():
                # First increment in this process (or after a fork): start its flusher.
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, args=(interval,), name="metrics-flush", daemon=True)
                self.thread.start()

    def _run(self, interval: float) -> None:
        while True:
            self.wake.wait(interval)
            self.wake.clear()
            flush()

    def take(self) -> dict[str, float]:
        with self.lock:
            counts, self.counts = self.counts, {}
        return counts


_buffer = _Buffer()
_flush_lock = threading.Lock()


def incr(name: str, amount: float = 1, **labels: str) -> None:
    """Add to a counter (name should end in ``_total``). Never raises."""
    assert _NAME.match(name), name
    series = _series(name, labels)
    interval = float(getattr(settings, "METRICS_FLUSH_SECONDS", 1.0))
    if interval > 0:
        _buffer.add(series, amount, interval)
        return
    _write({series: amount})


def flush() -> None:
    """Write this process's buffered increments to Redis now (a scrape, shutdown, tests)."""
    with _flush_lock:  # a concurrent flush finishes its write before this one returns
        counts = _buffer.take()
        if counts:
            _write(counts)


def _write(counts: dict[str, float]) -> None:
    try:
        pipe = redis_client().pipeline(transaction=False)
        for series, amount in counts.items():
            pipe.hincrbyfloat(_key(), series, amount)
        pipe.execute()
    except redis.RedisError as exc:
        # Kept for the next flush (a Redis restart loses no counts); lost only if the process ends first.
        with _buffer.lock:
            for series, amount in counts.items():
                _buffer.counts[series] = _buffer.counts.get(series, 0.0) + amount
        logger.warning(
            "metrics not written: redis unavailable; retrying at the next flush",
            extra={"series": len(counts), "error": str(exc)},
        )


atexit.register(flush)


def register_gauge(name: str, help_text: str, fn: Callable[[], Iterable[Sample]]) -> None:
    """``fn`` yields (name, labels, value) samples at scrape time."""
    _gauges[name] = (help_text, fn)


def render() -> str:
    lines: list[str] = []
    flush()
    try:
        # A synchronous client: hgetall returns the hash itself (the stubs also allow an Awaitable).
        raw = cast(dict[bytes, bytes], redis_client().hgetall(_key()))
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
