"""/api/health, structured logs and correlation ids."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.logs import CorrelationIdFilter, JsonFormatter, correlation_id

ROOT = Path(__file__).resolve().parents[2]


def test_health_is_healthy_with_every_service_up(client, db):
    body = client.get("/api/health").json()

    assert body["status"] == "healthy"
    assert body["checks"]["postgres"]["status"] == "up"
    assert body["checks"]["redis"]["status"] == "up"
    assert isinstance(body["checks"]["postgres"]["latency_ms"], float)


def test_health_is_degraded_when_redis_is_down(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    response = client.get("/api/health")

    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["redis"]["status"] == "down"
    assert response.json()["checks"]["postgres"]["status"] == "up"


def test_health_is_degraded_when_rabbitmq_is_configured_but_down(client, db, settings):
    settings.RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:1//"

    body = client.get("/api/health").json()

    assert body["status"] == "degraded"
    assert body["checks"]["rabbitmq"]["status"] == "down"


@pytest.mark.skipif(not os.environ.get("RABBITMQ_URL"), reason="RABBITMQ_URL not set")
def test_health_reports_rabbitmq_up_when_configured(client, db, settings):
    settings.RABBITMQ_URL = os.environ["RABBITMQ_URL"]

    assert client.get("/api/health").json()["checks"]["rabbitmq"]["status"] == "up"


def test_health_is_unhealthy_with_503_without_postgres():
    """A server process whose database is unreachable answers 503 unhealthy (checked in a fresh process)."""
    env = dict(os.environ, DATABASE_URL="postgresql://postgres@127.0.0.1:1/none", DB_CONNECT_TIMEOUT="1")
    code = (
        "import django, json; django.setup(); from django.test import Client;"
        "r = Client().get('/api/health'); print(json.dumps({'code': r.status_code, 'body': r.json()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["code"] == 503
    assert result["body"]["status"] == "unhealthy"
    assert result["body"]["checks"]["postgres"]["status"] == "down"
    assert result["body"]["checks"]["redis"]["status"] == "up"


def test_log_lines_are_json_with_the_correlation_id_and_extra_fields():
    record = logging.LogRecord("metachat.test", logging.INFO, __file__, 1, "turn done in %d ms", (12,), None)
    record.tenant_id = "t-1"
    token = correlation_id.set("abc123")
    try:
        CorrelationIdFilter().filter(record)
        line = JsonFormatter().format(record)
    finally:
        correlation_id.reset(token)

    parsed = json.loads(line)
    assert parsed["message"] == "turn done in 12 ms"
    assert parsed["correlation_id"] == "abc123"
    assert parsed["tenant_id"] == "t-1"
    assert parsed["level"] == "INFO"
