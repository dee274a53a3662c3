"""The one way the apps talk to Redis directly (rate limits, web chat sockets, outbox kick flags, health,
the Celery queue-length gauge).

One client, hence one connection pool, per URL per process: ``redis.Redis.from_url`` builds a new pool
(and a client with its table of ~200 response callbacks) on every call, so a client made per operation
opens a fresh TCP connection each time. redis-py's pool is thread-safe and starts over in a forked child,
so the web process, the Celery threads and prefork children can all share this. Django's cache and the
channel layer keep their own clients: they are configured by their own settings.

Short timeouts on purpose: every caller degrades when Redis is slow or gone (a rate limit lets the request
through, a kick is left to the outbox sweep), and a request must not wait seconds to find that out.
"""

from __future__ import annotations

import functools

import redis
from django.conf import settings

CONNECT_TIMEOUT_SECONDS = 0.5
COMMAND_TIMEOUT_SECONDS = 0.5


@functools.cache
def client_for(url: str) -> redis.Redis:
    """The process's client for ``url``: for a Redis other than REDIS_URL's (the Celery broker's, read
    by the queue-length gauge), with the same pool per URL and the same short timeouts."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=COMMAND_TIMEOUT_SECONDS
    )


def redis_client() -> redis.Redis:
    """The process's client for ``settings.REDIS_URL`` (read at each call, so a changed URL gets its own)."""
    return client_for(settings.REDIS_URL)
