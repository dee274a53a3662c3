"""Meta's webhook POSTs through the ASGI application daphne serves (the fast path in front of Django).

The requests go through ``config.asgi.application`` exactly as daphne hands them over, so the real
verification, routing and storage run on the fast path's worker thread with its own database
connection (hence transactional tests: the rows must be committed to be seen across connections).
"""

from __future__ import annotations

import json

import pytest

from channels_app.adapters.meta import sign
from channels_app.models import InboundEvent
from tests.channels_app.conftest import WA_SECRET, asgi_request, fixture_bytes

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_thread_connections():
    """Each asyncio.run has its own executor threads: let them close their connection after each
    request (as with CONN_MAX_AGE=0) so the test database can be dropped at the end."""
    from django.db import connections

    database = connections.settings["default"]
    before = database["CONN_MAX_AGE"]
    database["CONN_MAX_AGE"] = 0
    yield
    database["CONN_MAX_AGE"] = before


def call(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    query: str = "",
    chunk: int | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app; the body arrives in pieces of ``chunk`` bytes when given."""
    raw_headers = [(b"host", b"127.0.0.1:8000")] + [
        (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()
    ]
    size = chunk or max(1, len(body))
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
    ]
    status, response_headers, body_out, _ = asgi_request(method, path, messages, raw_headers, query=query.encode())
    return status, response_headers, body_out


def signed(body: bytes, secret: str = WA_SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "x-hub-signature-256": sign(body, secret, "sha256")}


def test_signed_post_is_stored_once_and_acknowledged_with_the_request_id(wa_channel):
    body = fixture_bytes("whatsapp", "text")
    headers = {**signed(body), "x-request-id": "meta-delivery-42"}

    status, response_headers, answer = call("POST", "/webhooks/whatsapp", body, headers)
    again_status, _, again = call("POST", "/webhooks/whatsapp", body, headers)  # Meta redelivers

    assert status == 200 and json.loads(answer)["stored"] == 1
    assert response_headers["x-request-id"] == "meta-delivery-42"
    assert response_headers["content-type"] == "application/json"
    assert again_status == 200 and json.loads(again)["stored"] == 0
    assert InboundEvent.objects.filter(channel=wa_channel, kind="message").count() == 1


def test_wrong_signature_is_refused_with_a_json_error_and_nothing_stored(wa_channel):
    body = fixture_bytes("whatsapp", "text")
    status, headers, answer = call("POST", "/webhooks/whatsapp", body, signed(body, "not-the-app-secret"))

    assert status == 401
    assert json.loads(answer)["error"]["code"] == "invalid_signature"
    assert headers["x-request-id"]  # generated when the caller sends none
    assert InboundEvent.objects.count() == 0


def test_malformed_json_answers_400(wa_channel):
    body = b'{"object": "whatsapp_business_account", '
    status, _, answer = call("POST", "/webhooks/whatsapp", body, signed(body))
    assert status == 400
    assert json.loads(answer)["error"]["code"] == "invalid_json"


def test_oversized_bodies_answer_413_declared_or_streamed(wa_channel, settings):
    settings.WEBHOOK_MAX_BODY_BYTES = 1000
    big = b'{"entry": [' + b" " * 5000 + b"]}"

    declared = call("POST", "/webhooks/whatsapp", big, {**signed(big), "content-length": str(len(big))})
    streamed = call("POST", "/webhooks/whatsapp", big, signed(big), chunk=400)  # no length announced

    for status, _, answer in (declared, streamed):
        assert status == 413
        assert json.loads(answer)["error"]["code"] == "payload_too_large"
    assert InboundEvent.objects.count() == 0


def test_a_body_in_several_pieces_is_read_whole(wa_channel):
    body = fixture_bytes("whatsapp", "batch_several_messages_and_users")
    status, _, answer = call("POST", "/webhooks/whatsapp", body, signed(body), chunk=97)
    assert status == 200 and json.loads(answer)["stored"] == 4


def test_the_handshake_and_other_paths_still_go_through_django(wa_channel):
    query = "hub.mode=subscribe&hub.verify_token=wa-verify-token&hub.challenge=1158201444"
    status, headers, answer = call("GET", "/webhooks/whatsapp", query=query)
    assert status == 200 and answer == b"1158201444"
    assert headers["x-request-id"]  # Django's middleware answered

    status, _, answer = call("GET", "/api/health")
    assert status in (200, 503) and "checks" in json.loads(answer)


def _terminate_other_backends() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_a_database_connection_lost_between_webhooks_costs_no_delivery(wa_channel):
    """The fast path skips Django's per-request `SELECT 1`; a pooled connection the server dropped
    (restart, idle timeout) must still not turn Meta's next delivery into an error."""
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 600  # keep the webhook threads' connections
    try:
        first = fixture_bytes("whatsapp", "text")
        assert call("POST", "/webhooks/whatsapp", first, signed(first))[0] == 200
        assert _terminate_other_backends() >= 1  # the webhook thread's pooled connection is gone

        second = first.replace(b"wamid.", b"wamid.after-drop-")
        assert second != first
        statuses = [call("POST", "/webhooks/whatsapp", second, signed(second))[0] for _ in range(8)]
    finally:
        connections.settings["default"]["CONN_MAX_AGE"] = 0
        _terminate_other_backends()  # so the test database can be dropped

    assert statuses == [200] * 8  # every thread of the pool met a dead or fresh connection: all answered
    assert InboundEvent.objects.filter(dedupe_key__startswith="wamid.after-drop-").count() == 1
