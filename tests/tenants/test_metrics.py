"""Prometheus metrics: counters shared through Redis, gauges from the database, admin-key protected."""

import pytest
from django.conf import settings

from config import metrics


@pytest.fixture(autouse=True)
def clean_counters(redis_client):
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


def test_a_metric_is_dropped_not_raised_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    metrics._client.cache_clear()
    try:
        metrics.incr("anything_total")  # must not raise
    finally:
        metrics._client.cache_clear()
