"""Wrong signatures, malformed JSON, huge bodies, unknown ids, duplicates, handshake."""

from __future__ import annotations

import json

from channels_app import services
from channels_app.models import InboundEvent, UnroutedWebhook
from tests.channels_app.conftest import (
    MS_SECRET,
    WA_PHONE_NUMBER_ID,
    WA_SECRET,
    fixture_bytes,
    stored_messages,
)


def test_wrong_signature_is_refused_and_nothing_is_stored(wa_channel, post_webhook):
    response = post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), "not-the-app-secret")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert InboundEvent.objects.count() == 0
    assert UnroutedWebhook.objects.count() == 0


def test_missing_signature_is_refused(wa_channel, post_webhook):
    response = post_webhook("whatsapp", fixture_bytes("whatsapp", "text"))
    assert response.status_code == 401
    assert InboundEvent.objects.count() == 0


def test_signature_over_a_modified_body_is_refused(wa_channel, client):
    from channels_app.adapters.meta import sign

    body = fixture_bytes("whatsapp", "text")
    tampered = body.replace(b"opening hours", b"closing hours")
    response = client.generic(
        "POST",
        "/webhooks/whatsapp",
        tampered,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=sign(body, WA_SECRET),
    )
    assert response.status_code == 401
    assert InboundEvent.objects.count() == 0


def test_signature_without_sha256_prefix_is_refused(wa_channel, client):
    from channels_app.adapters.meta import sign

    body = fixture_bytes("whatsapp", "text")
    digest = sign(body, WA_SECRET).removeprefix("sha256=")
    response = client.generic(
        "POST", "/webhooks/whatsapp", body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=digest
    )
    assert response.status_code == 401


def test_messenger_accepts_the_legacy_sha1_signature(ms_channel, post_webhook):
    response = post_webhook("messenger", fixture_bytes("messenger", "text"), MS_SECRET, algorithm="sha1")
    assert response.status_code == 200
    assert len(stored_messages(ms_channel)) == 1


def test_messenger_refuses_sha1_when_disabled(ms_channel, post_webhook, settings):
    settings.MESSENGER_ACCEPT_SHA1_SIGNATURE = False
    response = post_webhook("messenger", fixture_bytes("messenger", "text"), MS_SECRET, algorithm="sha1")
    assert response.status_code == 401


def test_whatsapp_never_accepts_sha1_alone(wa_channel, post_webhook):
    response = post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), WA_SECRET, algorithm="sha1")
    assert response.status_code == 401


def test_malformed_json_answers_400_and_stores_nothing(wa_channel, post_webhook):
    body = b'{"object": "whatsapp_business_account", "entry": [ '
    response = post_webhook("whatsapp", body, WA_SECRET)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert InboundEvent.objects.count() == 0 and UnroutedWebhook.objects.count() == 0


def test_json_that_is_not_an_object_answers_400(wa_channel, post_webhook):
    response = post_webhook("whatsapp", b"[1, 2]", WA_SECRET)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_payload"


def test_huge_body_answers_413(wa_channel, post_webhook, settings):
    settings.WEBHOOK_MAX_BODY_BYTES = 1000
    body = json.dumps({"object": "whatsapp_business_account", "entry": [], "pad": "x" * 2000}).encode()
    response = post_webhook("whatsapp", body, WA_SECRET)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert InboundEvent.objects.count() == 0 and UnroutedWebhook.objects.count() == 0


def test_three_megabyte_batch_is_accepted(wa_channel, post_webhook):
    """Meta sends up to 3 MB; the default limit (5 MB) takes it."""
    payload = json.loads(fixture_bytes("whatsapp", "text"))
    value = payload["entry"][0]["changes"][0]["value"]
    value["messages"] = [
        {**value["messages"][0], "id": f"wamid.BIG{i}", "text": {"body": "y" * 3000}} for i in range(1000)
    ]
    body = json.dumps(payload).encode()
    assert len(body) > 3_000_000
    response = post_webhook("whatsapp", body, WA_SECRET)
    assert response.status_code == 200
    assert response.json()["stored"] == 1000


def test_unknown_phone_number_is_kept_answered_200_and_never_processed(wa_channel, post_webhook):
    body = fixture_bytes("whatsapp", "text").replace(WA_PHONE_NUMBER_ID.encode(), b"9999999999")
    response = post_webhook("whatsapp", body, WA_SECRET)
    assert response.status_code == 200
    assert response.json()["status"] == "unrouted"
    assert InboundEvent.objects.count() == 0
    kept = UnroutedWebhook.objects.get()
    assert (kept.platform, kept.reason, kept.external_ids) == ("whatsapp", "unknown ids", ["9999999999"])
    assert kept.body == body.decode()
    assert kept.headers["x-hub-signature-256"].startswith("sha256=")


def test_known_and_unknown_ids_in_one_post(wa_channel, post_webhook):
    payload = json.loads(fixture_bytes("whatsapp", "batch_several_messages_and_users"))
    payload["entry"][1]["changes"][0]["value"]["metadata"]["phone_number_id"] = "5550000000"
    response = post_webhook("whatsapp", json.dumps(payload).encode(), WA_SECRET)
    assert response.status_code == 200
    assert [m["message_id"] for m in stored_messages(wa_channel)] == ["wamid.BATCH1==", "wamid.BATCH2=="]
    assert UnroutedWebhook.objects.get().external_ids == ["5550000000"]


def test_entries_of_two_channels_must_each_verify(wa_channel, tenant, other_tenant, post_webhook):
    """A POST addressing two channels whose app secrets differ cannot verify against both: refused."""
    services.channel_create(
        tenant=other_tenant,
        type="whatsapp",
        name="Other",
        external_id="5550000000",
        credentials={"app_secret": "another-apps-secret"},
    )
    payload = json.loads(fixture_bytes("whatsapp", "batch_several_messages_and_users"))
    payload["entry"][1]["changes"][0]["value"]["metadata"]["phone_number_id"] = "5550000000"
    response = post_webhook("whatsapp", json.dumps(payload).encode(), WA_SECRET)
    assert response.status_code == 401
    assert InboundEvent.objects.count() == 0


def test_entries_of_two_channels_of_one_app_are_stored_for_each_tenant(wa_channel, other_tenant, post_webhook):
    other = services.channel_create(
        tenant=other_tenant,
        type="whatsapp",
        name="Second number",
        external_id="5550000000",
        credentials={"app_secret": WA_SECRET},
    )
    payload = json.loads(fixture_bytes("whatsapp", "batch_several_messages_and_users"))
    payload["entry"][1]["changes"][0]["value"]["metadata"]["phone_number_id"] = "5550000000"
    response = post_webhook("whatsapp", json.dumps(payload).encode(), WA_SECRET)
    assert response.status_code == 200
    assert [m["message_id"] for m in stored_messages(wa_channel)] == ["wamid.BATCH1==", "wamid.BATCH2=="]
    assert [m["message_id"] for m in stored_messages(other)] == ["wamid.BATCH3=="]
    assert InboundEvent.objects.for_tenant(other_tenant).count() == 2  # message + status


def test_channel_without_app_secret_refuses_and_keeps_the_payload(tenant, post_webhook):
    services.channel_create(tenant=tenant, type="whatsapp", name="No secret", external_id=WA_PHONE_NUMBER_ID)
    response = post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), WA_SECRET)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "channel_not_configured"
    assert UnroutedWebhook.objects.get().reason == "channel has no app secret"
    assert InboundEvent.objects.count() == 0


def test_redelivery_stores_the_message_once(wa_channel, post_webhook):
    body = fixture_bytes("whatsapp", "text")
    first = post_webhook("whatsapp", body, WA_SECRET)
    second = post_webhook("whatsapp", body, WA_SECRET)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["stored"], second.json()["stored"]) == (1, 0)
    assert len(stored_messages(wa_channel)) == 1


def test_rotated_app_secret_is_used_at_once(wa_channel, post_webhook, settings):
    settings.WEBHOOK_CHANNEL_CACHE_SECONDS = 30
    body = fixture_bytes("whatsapp", "text")
    assert post_webhook("whatsapp", body, "wrong").status_code == 401  # warms the cache
    services.channel_set_credentials(channel=wa_channel, credentials={"app_secret": "rotated-secret"})
    assert post_webhook("whatsapp", body, WA_SECRET).status_code == 401
    assert post_webhook("whatsapp", body, "rotated-secret").status_code == 200


def test_handshake_answers_the_challenge_as_plain_text(wa_channel, client):
    response = client.get(
        "/webhooks/whatsapp",
        {"hub.mode": "subscribe", "hub.verify_token": "wa-verify-token", "hub.challenge": "1158201444"},
    )
    assert response.status_code == 200
    assert response.content == b"1158201444"
    assert response["Content-Type"].startswith("text/plain")


def test_handshake_with_a_wrong_token_answers_403_without_the_challenge(wa_channel, client):
    response = client.get(
        "/webhooks/whatsapp", {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "CHALLENGE"}
    )
    assert response.status_code == 403
    assert b"CHALLENGE" not in response.content


def test_handshake_token_of_another_platform_is_refused(wa_channel, ms_channel, client):
    response = client.get(
        "/webhooks/messenger",
        {"hub.mode": "subscribe", "hub.verify_token": "wa-verify-token", "hub.challenge": "x"},
    )
    assert response.status_code == 403
    ok = client.get(
        "/webhooks/messenger",
        {"hub.mode": "subscribe", "hub.verify_token": "ms-verify-token", "hub.challenge": "CHALLENGE_ACCEPTED"},
    )
    assert (ok.status_code, ok.content) == (200, b"CHALLENGE_ACCEPTED")


def test_handshake_needs_subscribe_mode(wa_channel, client):
    response = client.get(
        "/webhooks/whatsapp", {"hub.mode": "unsubscribe", "hub.verify_token": "wa-verify-token", "hub.challenge": "1"}
    )
    assert response.status_code == 403


def test_other_methods_answer_405_json(client, db):
    response = client.put("/webhooks/whatsapp", b"{}", content_type="application/json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_refused_and_accepted_webhooks_are_counted_at_metrics(wa_channel, post_webhook, client):
    """An operator sees refused deliveries in Prometheus, not only in the logs."""
    from tests.metrics_scrape import scrape, value

    name = "metachat_webhook_requests_total"
    before = scrape(client)
    post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), "not-the-app-secret")
    post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), "not-the-app-secret")
    post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), WA_SECRET)

    after = scrape(client)

    refused = {"platform": "whatsapp", "outcome": "invalid_signature"}
    assert value(after, name, **refused) - value(before, name, **refused) == 2
    ok = {"platform": "whatsapp", "outcome": "ok"}
    assert value(after, name, **ok) - value(before, name, **ok) == 1
