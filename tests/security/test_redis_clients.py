"""The apps' direct Redis calls (rate limits, outbox kick flags, health, the Celery queue gauge) go
through one client with one connection pool per URL per process (config.redis_clients), not a pool of
their own each."""

from __future__ import annotations

import uuid

import pytest
import redis
from django.conf import settings

from config import health, metrics
from config.redis_clients import redis_client
from events import outbox
from tenants import ratelimit


@pytest.fixture
def shared_connection_name() -> str:
    """Names the shared pool's one idle connection, so another connection can watch what it runs."""
    name = f"shared-{uuid.uuid4().hex[:12]}"
    redis_client().client_setname(name)
    return name


def last_command(name: str) -> str:
    observer = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return next(client["cmd"] for client in observer.client_list() if client["name"] == name)
    finally:
        observer.close()


def test_health_check_pings_on_the_shared_connection(shared_connection_name):
    health.check_redis()

    assert last_command(shared_connection_name) == "ping"


def test_outbox_kick_flags_are_cleared_on_the_shared_connection(shared_connection_name):
    outbox.clear_flag(f"flag-{shared_connection_name}")

    assert last_command(shared_connection_name) == "del"


def test_rate_limit_counts_on_the_shared_connection(shared_connection_name, settings):
    settings.RATELIMIT_ENABLE = True

    verdict = ratelimit.hit_pipelined(group="redis-clients", key=shared_connection_name, limit=5)

    assert (verdict.allowed, verdict.count) == (True, 1)
    assert last_command(shared_connection_name) == "exec"


def test_the_celery_queue_gauge_reads_the_broker_on_the_shared_client_of_its_url(shared_connection_name, settings):
    settings.CELERY_BROKER_URL = settings.REDIS_URL

    assert {queue for _name, labels, _value in metrics.celery_queue_gauge() for queue in labels.values()}

    assert last_command(shared_connection_name) == "llen"


def test_one_client_per_url(settings):
    first = redis_client()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    assert redis_client() is not first
    assert redis_client() is redis_client()
