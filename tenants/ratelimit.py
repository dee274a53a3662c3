"""The platform's rate limiter, and who a client is.

Every limit is a fixed window counted in Redis, shared by every server process, behind one verdict
(``Verdict``), one switch (django-ratelimit's RATELIMIT_ENABLE), one failure policy and one notion of
the client (``client_address``). Two ways to count:

- ``hit``: django-ratelimit (windows jittered per key) in the cache named by RATELIMIT_USE_CACHE, the
  Redis cache of CACHES. The per-tenant API limit (``TenantRateThrottle``: the tenant's
  ``rate_limit_per_minute`` or API_RATE_LIMIT_PER_MINUTE), web chat sessions per widget and client
  address and per widget, and failed admin logins count here.
- ``hit_pipelined``: one pipelined INCR + EXPIRE, the limiter the platform had before. Kept for the two
  limits on paths that take floods, unrouted webhooks (per source and in total) and visitor messages:
  bench.ratelimit measured django-ratelimit at 3.5x its CPU per hit (323 vs 93 µs: three round trips
  through Django's cache client, which builds a Redis client per call), and a dropped webhook at
  3x the CPU (361 vs 123 µs).

Keys are explicit strings (a tenant id, ``widget key + address``, ...) rather than django-ratelimit's
request accessors, because half the callers have no HttpRequest (the webhook fast path, the WebSocket
consumer). ``retry_after`` is the time to that key's window end. A limit of 0 switches that limit off.
If Redis is unreachable the hit is let through, logged and counted (``ratelimit_unavailable_total``):
an outage of the cache must not take the API, the chat or the webhooks down.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from config import metrics
from config.redis_clients import redis_client
from tenants.auth import Principal

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    count: int
    limit: int
    retry_after: int  # seconds until the key's window ends; 0 when nothing was counted


def hit(*, group: str, key: str, limit: int, period: int = WINDOW_SECONDS, increment: bool = True) -> Verdict:
    """Count one event of ``key`` in ``group`` (or only read the count, ``increment=False``).

    ``allowed`` is False once the window holds more than ``limit`` events."""
    if limit <= 0:
        return Verdict(allowed=True, count=0, limit=0, retry_after=0)
    try:
        # No request: the key is given, and with method=ALL django-ratelimit reads nothing else from it.
        usage = get_usage(
            None, group=group, key=lambda _group, _request: key, rate=(limit, period), increment=increment
        )
    except (redis.RedisError, OSError) as exc:
        logger.warning("rate limit not checked: redis unavailable", extra={"group": group, "error": str(exc)})
        metrics.incr("ratelimit_unavailable_total", group=group)
        return Verdict(allowed=True, count=0, limit=limit, retry_after=0)
    if usage is None:  # RATELIMIT_ENABLE=False
        return Verdict(allowed=True, count=0, limit=limit, retry_after=0)
    return Verdict(
        allowed=not usage["should_limit"],
        count=int(usage["count"]),
        limit=limit,
        retry_after=max(1, int(usage["time_left"])),
    )


def hit_pipelined(*, group: str, key: str, limit: int, period: int = WINDOW_SECONDS) -> Verdict:
    """Count one event like ``hit``, in one Redis round trip (windows aligned on the epoch). As with
    ``hit``, the rate is part of the key: a changed limit starts a fresh count."""
    if limit <= 0 or not getattr(settings, "RATELIMIT_ENABLE", True):
        return Verdict(allowed=True, count=0, limit=max(limit, 0), retry_after=0)
    now = time.time()
    window = int(now // period)
    name = f"{settings.REDIS_KEY_PREFIX}:rl:{group}:{limit}/{period}:{key}:{window}"
    try:
        pipe = redis_client().pipeline()
        pipe.incr(name)
        pipe.expire(name, period + 5)
        count, _ = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("rate limit not checked: redis unavailable", extra={"group": group, "error": str(exc)})
        metrics.incr("ratelimit_unavailable_total", group=group)
        return Verdict(allowed=True, count=0, limit=limit, retry_after=0)
    return Verdict(
        allowed=count <= limit, count=count, limit=limit, retry_after=max(1, int((window + 1) * period - now + 0.999))
    )


# --- who the client is -------------------------------------------------------------------------------


def client_address(*, peer: str, forwarded_for: str = "") -> str:
    """The address limits are keyed by: the TCP peer, or with TRUSTED_PROXY_COUNT = N proxies in front,
    the Nth entry from the right of X-Forwarded-For (entries further left are the client's own words).

    IPv6 addresses are reduced to their /64: one host usually holds a whole /64, and counting each of
    its addresses apart would let it walk through any per-address limit."""
    hops = int(settings.TRUSTED_PROXY_COUNT)
    address = peer
    if hops > 0 and forwarded_for:
        entries = [entry.strip() for entry in forwarded_for.split(",") if entry.strip()]
        if entries:
            address = entries[-hops] if len(entries) >= hops else entries[0]
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address[:100] or "unknown"  # a unix socket peer, or a proxy that wrote a name
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False).network_address) + "/64"
    return str(parsed)


def request_client_address(request: HttpRequest) -> str:
    return client_address(
        peer=request.META.get("REMOTE_ADDR", ""), forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", "")
    )


def scope_client_address(scope: dict[str, Any]) -> str:
    """The same for an ASGI scope (the webhook fast path)."""
    client = scope.get("client") or ("", 0)
    forwarded = b""
    if settings.TRUSTED_PROXY_COUNT > 0:
        forwarded = b", ".join(value for name, value in scope.get("headers", []) if name.lower() == b"x-forwarded-for")
    return client_address(peer=str(client[0] or ""), forwarded_for=forwarded.decode("latin-1"))


# --- the API ------------------------------------------------------------------------------------------


def limit_for(tenant: Any) -> int:
    return tenant.rate_limit_per_minute or settings.API_RATE_LIMIT_PER_MINUTE


class TenantRateThrottle(BaseThrottle):
    """Requests per tenant per minute, whichever key and server they come through; 429 with Retry-After."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, Principal) or principal.tenant is None:
            return True  # the admin key and public endpoints are not tenant-limited here
        verdict = hit(group="api.tenant", key=str(principal.tenant.pk), limit=limit_for(principal.tenant))
        if not verdict.allowed:
            self._wait = verdict.retry_after
        return verdict.allowed

    def wait(self) -> float | None:
        return self._wait
