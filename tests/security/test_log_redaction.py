"""Finding 11: credentials in logs. A refused Meta handshake logged its whole query string (the verify
token); API keys sent as ``?api_key=`` / ``?key=`` were refused but logged in full. Every record the
platform writes goes through one redaction in config.logs; these tests read the real log output (the
configured JSON handler on stdout) of real requests."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings

from channels_app import services as channel_services
from config.logs import JsonFormatter
from tenants import services as tenant_services

VERIFY_TOKEN = "vt-canary-6f1d0c2e9b"


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """``log_lines()``: the JSON lines the configured root handler (settings.LOGGING) wrote so far."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    if not handlers:  # an earlier test's in-process Celery worker took the root logger over
        logging.config.dictConfig(settings.LOGGING)
        handlers = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    (handler,) = handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    handler.setStream(previous)


def test_a_refused_meta_handshake_logs_no_verify_token(client, tenant, log_lines):
    channel_services.channel_create(
        tenant=tenant,
        type="whatsapp",
        name="Support",
        external_id="1122334455667",
        credentials={"verify_token": "the-real-verify-token"},
    )

    response = client.get(
        "/webhooks/whatsapp", {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
    )

    assert response.status_code == 403
    lines = log_lines()
    refused = [line for line in lines if line["logger"] == "django.request" and line["status_code"] == 403]
    assert len(refused) == 1
    assert "hub.verify_token=***" in refused[0]["request"]
    assert "hub.challenge=42" in refused[0]["request"]  # what is not a credential stays readable
    assert VERIFY_TOKEN not in json.dumps(lines)


def test_api_keys_sent_in_the_url_are_refused_with_a_reason_and_not_logged(client, tenant, log_lines):
    raw_key = tenant_services.api_key_create(tenant=tenant).raw_key

    by_api_key = client.get(f"/api/tenants/{tenant.pk}/?api_key={raw_key}&page=2")
    by_key = client.get(f"/api/tenants/{tenant.pk}/", {"key": raw_key})

    assert (by_api_key.status_code, by_key.status_code) == (401, 401)
    assert by_api_key.json()["error"]["code"] == "authentication_failed"
    assert "not accepted in the URL" in by_api_key.json()["error"]["message"]
    lines = log_lines()
    assert raw_key not in json.dumps(lines)
    refused = [line["request"] for line in lines if line["logger"] == "django.request"]
    assert len(refused) == 2
    assert "api_key=***&page=2" in refused[0]
    assert "key=***" in refused[1]


def test_a_key_in_the_url_is_refused_even_beside_a_valid_header(client, tenant):
    raw_key = tenant_services.api_key_create(tenant=tenant).raw_key

    response = client.get(f"/api/tenants/{tenant.pk}/?access_token={raw_key}", HTTP_X_API_KEY=raw_key)

    assert response.status_code == 401


def test_credential_headers_and_fields_in_a_log_record_are_redacted(log_lines):
    logging.getLogger("metachat.test").warning(
        "outbound call refused: Authorization: Bearer sk-canary-1",
        extra={
            "url": "https://h/x?access_token=EAAcanary2&a=1",
            "headers": {
                "X-Hub-Signature-256": "sha256=canary3",
                "X-API-Key": "mcp_canary4",
                "Cookie": "sessionid=canary5",
                "Content-Type": "application/json",
            },
            "meta": {"HTTP_AUTHORIZATION": "Bearer canary6"},
            "client_secret": "canary7",
        },
    )

    (line,) = [entry for entry in log_lines() if entry["logger"] == "metachat.test"]
    assert "canary" not in json.dumps(line)
    # A header's value runs to the end of its line: more may go than the credential, never less.
    assert line["message"] == "outbound call refused: Authorization: ***"
    assert line["url"] == "https://h/x?access_token=***&a=1"
    assert line["headers"] == {
        "X-Hub-Signature-256": "***",
        "X-API-Key": "***",
        "Cookie": "***",
        "Content-Type": "application/json",
    }
    assert line["meta"] == {"HTTP_AUTHORIZATION": "***"}
    assert line["client_secret"] == "***"
