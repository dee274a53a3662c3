"""Per-tenant API rate limits in Redis: a fixed one-minute window per tenant, shared by all servers.

The limit is the tenant's ``rate_limit_per_minute`` or the deployment's API_RATE_LIMIT_PER_MINUTE.
Exceeding it answers 429 with ``Retry-After`` (seconds to the window's end). If Redis is unreachable
the request is let through and the failure is logged: an outage of the cache must not take the API down.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from tenants.auth import Principal

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)


def limit_for(tenant: Any) -> int:
    return tenant.rate_limit_per_minute or settings.API_RATE_LIMIT_PER_MINUTE


def hit(*, tenant_id: Any, limit: int, now: float | None = None) -> tuple[bool, int]:
    """Count one request; return (allowed, seconds until the window resets)."""
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    key = f"{settings.REDIS_KEY_PREFIX}:ratelimit:{tenant_id}:{window}"
    pipe = _client().pipeline()
    pipe.incr(key)
    pipe.expire(key, WINDOW_SECONDS + 5)
    count, _ = pipe.execute()
    reset_in = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
    return count <= limit, reset_in


class TenantRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, Principal) or principal.tenant is None:
            return True  # the admin key and public endpoints are not tenant-limited here
        try:
            allowed, reset_in = hit(tenant_id=principal.tenant.pk, limit=limit_for(principal.tenant))
        except redis.RedisError as exc:
            logger.warning("rate limit check skipped: redis unavailable", extra={"error": str(exc)})
            return True
        if not allowed:
            self._wait = reset_in
        return allowed

    def wait(self) -> float | None:
        return self._wait
