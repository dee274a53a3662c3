"""Prometheus metrics: counters shared through Redis, gauges from the database, admin-key protected."""

import pytest
from django.conf import settings

from config import metrics


@pytest.fixture(autouse=True)
def clean_counters(redis_client):
    metrics.flush()  # counts of earlier tests still buffered in this process
    redis_client.delete(f"{settings.REDIS_KEY_PREFIX}:metrics:counters")
    yield
    redis_client.delete(f"{settings.REDIS_KEY_PREFIX}:metrics:counters")


@pytest.mark.django_db
def test_metrics_need_the_admin_key(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer mcp_wrong").status_code == 401


@pytest.mark.django_db
def test_counters_and_gauges_are_exposed_in_prometheus_format(client):
    metrics.incr("webhook_requests_total", platform="whatsapp", outcome="invalid_signature")
    metrics.incr("webhook_requests_total", platform="whatsapp", outcome="invalid_signature")
    metrics.incr("webhook_requests_total", platform="messenger", outcome="ok")

    body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.ADMIN_API_KEY}").content.decode()

    assert "# TYPE webhook_requests_total counter" in body
    assert 'webhook_requests_total{outcome="invalid_signature",platform="whatsapp"} 2' in body
    assert 'webhook_requests_total{outcome="ok",platform="messenger"} 1' in body
    assert "metachat_events_total_rows 0" in body


def test_counts_made_while_redis_is_down_are_kept_and_written_when_it_is_back(settings, redis_client):
    """A Redis outage neither breaks the counting caller nor loses the counts."""
    real_url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    try:
        metrics.incr("outage_probe_total", platform="whatsapp")  # must not raise
        metrics.incr("outage_probe_total", platform="whatsapp")
        metrics.flush()  # Redis unreachable: must not raise either
    finally:
        settings.REDIS_URL = real_url
    metrics.flush()
    stored = redis_client.hget(
        f"{settings.REDIS_KEY_PREFIX}:metrics:counters", 'outage_probe_total{platform="whatsapp"}'
    )
    assert float(stored) == 2


@pytest.mark.django_db
def test_a_scrape_sees_increments_of_its_own_process_at_once(client):
    metrics.incr("scrape_probe_total")
    body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.ADMIN_API_KEY}").content.decode()
    assert "scrape_probe_total 1" in body
