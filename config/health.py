"""GET /api/health: PostgreSQL (required), Redis and RabbitMQ (optional, degrade), plus registered checks.

Overall status: ``unhealthy`` (503) when a critical check fails, ``degraded`` (200) when a non-critical
one fails, else ``healthy``. Other areas add checks with ``register_check`` (e.g. the event outbox).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from config.errors import json_error
from config.redis_clients import redis_client


@dataclass
class CheckResult:
    ok: bool
    detail: dict[str, Any]


@dataclass
class Check:
    name: str
    fn: Callable[[], CheckResult | None]  # None: not configured, left out of the report
    critical: bool


_checks: dict[str, Check] = {}


def register_check(name: str, fn: Callable[[], CheckResult | None], *, critical: bool = False) -> None:
    _checks[name] = Check(name=name, fn=fn, critical=critical)


def check_postgres() -> CheckResult:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return CheckResult(ok=True, detail={})


def check_redis() -> CheckResult:
    redis_client().ping()
    return CheckResult(ok=True, detail={})


def check_rabbitmq() -> CheckResult | None:
    """An AMQP protocol handshake: the broker must answer Connection.Start, not just accept TCP."""
    if not settings.RABBITMQ_URL:
        return None
    url = urlparse(settings.RABBITMQ_URL)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672), timeout=1.5) as conn:
        conn.settimeout(1.5)
        conn.sendall(b"AMQP\x00\x00\x09\x01")
        frame = conn.recv(8)
    if len(frame) < 7 or frame[0] != 1:
        raise ConnectionError("broker did not answer the AMQP handshake")
    return CheckResult(ok=True, detail={})


register_check("postgres", check_postgres, critical=True)
register_check("redis", check_redis)
register_check("rabbitmq", check_rabbitmq)


def run_checks() -> tuple[str, dict[str, Any]]:
    results: dict[str, Any] = {}
    status = "healthy"
    for check in _checks.values():
        started = time.perf_counter()
        try:
            result = check.fn()
            if result is None:
                continue
            ok, detail = result.ok, result.detail
        except Exception as exc:
            ok, detail = False, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        entry = {
            "status": "up" if ok else "down",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        entry.update(detail)
        results[check.name] = entry
        if not ok:
            status = "unhealthy" if check.critical else ("degraded" if status == "healthy" else status)
    return status, results


def _only_get(request: HttpRequest) -> JsonResponse | None:
    if request.method in ("GET", "HEAD"):
        return None
    refused = json_error(405, "method_not_allowed", f"Method {request.method} is not allowed here; use GET.")
    refused["Allow"] = "GET, HEAD"
    return refused


@csrf_exempt  # a POST is answered 405 below, not with the CSRF middleware's HTML page
def live_view(request: HttpRequest) -> JsonResponse:
    """Liveness: this process still answers HTTP through Django (its event loop and request threads
    are not stuck). No dependency is checked: a database outage must not get every server restarted
    (readiness, ``/api/health``, takes the process out of the load balancer instead)."""
    return _only_get(request) or JsonResponse({"status": "alive"})


@csrf_exempt  # a POST is answered 405 below, not with the CSRF middleware's HTML page
def health_view(request: HttpRequest) -> JsonResponse:
    if refused := _only_get(request):
        return refused
    status, checks = run_checks()
    return JsonResponse({"status": status, "checks": checks}, status=503 if status == "unhealthy" else 200)
