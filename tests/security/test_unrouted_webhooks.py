"""Finding 9 (unsigned webhooks with unknown routing ids filled the database) and the webhook part of
finding 12 (a body nested 50,000 deep answered 500 with a traceback), driven as the attacker did:
unsigned POSTs to /webhooks/whatsapp, through the Django view and through the ASGI fast path daphne
serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone

from channels_app.models import UnroutedWebhook
from config.celery import app as celery_app
from tests.channels_app.conftest import asgi_request
from tests.metrics_scrape import scrape, value
from tests.payloads import whatsapp_payload

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN_NUMBER = "5550009999"


def unrouted_body(padding: int = 0, number: str = UNKNOWN_NUMBER) -> bytes:
    """A WhatsApp-shaped notification for a phone number id no channel has (unsigned, as anyone can send)."""
    return json.dumps(
        whatsapp_payload(phone_number_id=number, sender="1", text="x" * padding, wamid="wamid.X")
    ).encode()


def post(client: Any, body: bytes, address: str = "203.0.113.10") -> Any:
    return client.generic("POST", "/webhooks/whatsapp", body, content_type="application/json", REMOTE_ADDR=address)


def fast_path_post(body: bytes, address: str) -> tuple[int, dict[str, Any]]:
    """One POST through the ASGI application, from ``address`` (daphne's scope client)."""
    status, _, answer, _ = asgi_request(
        "POST",
        "/webhooks/whatsapp",
        [{"type": "http.request", "body": body, "more_body": False}],
        [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        client=(address, 40000),
    )
    return status, json.loads(answer)


@pytest.fixture(autouse=True)
def _close_thread_connections() -> Any:
    """The fast path's executor threads close their connection after each request in these tests."""
    from django.db import connections

    database = connections.settings["default"]
    before = database["CONN_MAX_AGE"]
    database["CONN_MAX_AGE"] = 0
    yield
    database["CONN_MAX_AGE"] = before


def counter(client: Any, limit: str) -> float:
    """The dropped-unrouted-webhooks counter as Prometheus scrapes it from /metrics (0 when not counted yet)."""
    return value(scrape(client), "metachat_unrouted_webhooks_dropped_total", limit=limit, platform="whatsapp")


KEPT = (200, {"status": "unrouted", "kept": True})
DROPPED = (200, {"status": "unrouted", "kept": False})


def assert_capped(answers: list[tuple[int, dict[str, Any]]], limit: int) -> int:
    """What a per-minute cap guarantees to a burst of 2 x limit + 1 payloads within a minute: the first
    ``limit`` are kept, and since a fixed window keeps ``limit`` and the burst spans at most two
    windows, at most 2 x ``limit`` are (at least one is dropped). Every one is answered 200 all the
    same. Returns how many were kept."""
    assert len(answers) == 2 * limit + 1
    assert answers[:limit] == [KEPT] * limit
    assert {answer == KEPT for answer in answers} == {True, False}
    assert all(answer in (KEPT, DROPPED) for answer in answers)
    assert answers.count(KEPT) <= 2 * limit
    return answers.count(KEPT)


def test_a_5_mb_unrouted_body_is_kept_as_an_excerpt_with_its_size_and_hash(client):
    body = unrouted_body(padding=5 * 1024 * 1024 - 1000)
    cap = django_settings.UNROUTED_WEBHOOK_MAX_STORED_BYTES

    response = post(client, body)

    assert response.status_code == 200
    assert response.json() == {"status": "unrouted", "kept": True}
    kept = UnroutedWebhook.objects.get()
    assert kept.external_ids == [UNKNOWN_NUMBER]
    assert kept.body == body[:cap].decode()
    assert (kept.body_bytes, kept.body_sha256, kept.body_truncated) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
        True,
    )


def test_unrouted_posts_over_the_per_address_cap_are_counted_not_stored(client, settings):
    settings.UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE = 3
    series = "address"
    dropped_before = counter(client, series)

    responses = [post(client, unrouted_body(), address="203.0.113.20") for _ in range(7)]
    other_sender = post(client, unrouted_body(), address="198.51.100.20").json()

    kept = assert_capped([(r.status_code, r.json()) for r in responses], 3)
    assert other_sender == {"status": "unrouted", "kept": True}
    assert UnroutedWebhook.objects.count() == kept + 1
    assert counter(client, series) - dropped_before == 7 - kept


def test_unrouted_posts_over_the_global_cap_are_dropped_on_the_fast_path_too(client, settings):
    settings.UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE = 100
    # The global count holds every unrouted post of the minute; a rate of its own starts it afresh.
    settings.UNROUTED_WEBHOOKS_PER_MINUTE = 2
    series = "global"
    dropped_before = counter(client, series)

    # A number of its own each: the route lookup then reads the database before the cap is counted, so
    # a pooled connection that died since the last test is replaced there (the fast path retries a
    # request once on a lost connection, which after the count would count it twice).
    answers = [fast_path_post(unrouted_body(number=f"555000{n}"), address=f"192.0.2.{n}") for n in range(1, 6)]

    kept = assert_capped(answers, 2)
    assert UnroutedWebhook.objects.count() == kept
    assert counter(client, series) - dropped_before == 5 - kept


def test_purge_command_deletes_unrouted_webhooks_past_the_retention_period(client):
    for _ in range(3):
        post(client, unrouted_body())
    old = list(UnroutedWebhook.objects.order_by("id").values_list("id", flat=True)[:2])
    retention = timedelta(days=django_settings.UNROUTED_WEBHOOK_RETENTION_DAYS)
    UnroutedWebhook.objects.filter(id__in=old).update(received_at=timezone.now() - retention - timedelta(minutes=1))

    from io import StringIO

    out = StringIO()
    call_command("purge_unrouted_webhooks", stdout=out)

    assert out.getvalue().endswith(
        f"Deleted 2 unrouted webhook(s) older than {django_settings.UNROUTED_WEBHOOK_RETENTION_DAYS} day(s).\n"
    )
    assert UnroutedWebhook.objects.count() == 1
    assert not UnroutedWebhook.objects.filter(id__in=old).exists()


def test_beat_runs_the_purge_hourly(client):
    post(client, unrouted_body())
    UnroutedWebhook.objects.update(received_at=timezone.now() - timedelta(days=365))
    entry = django_settings.CELERY_BEAT_SCHEDULE["purge-unrouted-webhooks"]
    celery_app.loader.import_default_modules()  # the task modules a worker loads at start

    result = celery_app.tasks[entry["task"]].apply()

    assert entry["schedule"] == 3600.0
    assert result.get() == 1
    assert UnroutedWebhook.objects.count() == 0


@pytest.mark.parametrize("depth", [200, 50_000])
def test_a_body_nested_too_deep_answers_400_without_a_traceback(client, caplog, depth):
    body = b'{"entry": ' + b"[" * depth + b"]" * depth + b"}"
    caplog.set_level(logging.INFO)
    expected = {
        "error": {
            "code": "too_deeply_nested",
            "message": f"The body is nested deeper than {django_settings.WEBHOOK_MAX_JSON_DEPTH} levels.",
            "details": {},
        }
    }

    view = post(client, body)
    fast = fast_path_post(body, address="203.0.113.30")

    assert (view.status_code, view.json()) == (400, expected)
    assert fast == (400, expected)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert UnroutedWebhook.objects.count() == 0
