"""Campaigns against the local Graph API server: opted-in contacts (CSV with source and time), a
template with per-contact variables, throttled sending; "STOP" honoured at once and forever; a
restarted campaign never sends anyone the same campaign twice; delivery statuses per recipient."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import time as day_time
from typing import Any

import pytest
from django.utils import timezone

from channels_app.models import Campaign, CampaignRecipient, Consent, MessageTemplate
from channels_app.services import campaigns, templates
from tests.channels_app.conftest import WA_PHONE_NUMBER_ID, WA_SECRET, WA_WABA_ID
from tests.conftest import wait_until

PROMO = {
    "id": "2001",
    "name": "spring_offer",
    "language": "en_US",
    "category": "MARKETING",
    "status": "APPROVED",
    "components": [{"type": "BODY", "text": "Hi {{1}}, spring is here: 20% off until Sunday."}],
}


@pytest.fixture(autouse=True)
def _one_sending_thread(settings: Any) -> None:
    """These tests' rows live in the test's transaction, which other connections cannot see; the
    threaded sending (CAMPAIGN_SEND_THREADS) runs with committed rows in test_campaign_kill.py."""
    settings.CAMPAIGN_SEND_THREADS = 1


@pytest.fixture
def template(wa_channel, graph) -> MessageTemplate:
    graph.templates[WA_WABA_ID] = [PROMO]
    templates.templates_sync(channel=wa_channel)
    return MessageTemplate.objects.get(name="spring_offer")


def phone(i: int) -> str:
    return f"1555{i:07d}"


def csv_of(n: int, start: int = 0) -> str:
    return "contact,first_name\n" + "".join(f"+{phone(i)},Name{i}\n" for i in range(start, start + n))


def user_says(post_webhook: Any, sender: str, text: str, n: int) -> None:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "X"}, "wa_id": sender}],
        "messages": [{"from": sender, "id": f"wamid.S{n}", "timestamp": str(int(time.time())), "type": "text",
                      "text": {"body": text}}],
    }  # fmt: skip
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [{"field": "messages", "value": value}]}],
    }
    assert post_webhook("whatsapp", json.dumps(body).encode(), WA_SECRET).status_code == 200


def sent_to(graph: Any) -> Counter:
    return Counter(p["json"]["to"] for p in graph.posts() if p["json"].get("type") == "template")


def test_2000_opted_in_contacts_each_get_it_once_and_the_50_who_said_stop_never(
    wa_channel, graph, template, post_webhook
):
    counts = campaigns.consent_import_csv(channel=wa_channel, text=csv_of(2000) + "not-a-number,x\n")
    assert counts == {"imported": 2000, "opted_out": 0, "invalid": 1}
    for i in range(25):  # before the campaign starts
        user_says(post_webhook, phone(i), "STOP", i)
    campaign = campaigns.campaign_create(
        channel=wa_channel, name="Spring", template=template, variables={"body": ["{first_name}"]}, rate_per_second=80,
        daily_limit=10_000,
    )  # fmt: skip
    assert campaigns.campaign_start(campaign=campaign) == 1975
    for i in range(25, 50):  # after: their pending messages are skipped at once
        user_says(post_webhook, phone(i), "stop", i)
    assert campaigns.consent_import_csv(channel=wa_channel, text=csv_of(50))["opted_out"] == 50  # forever

    outcome, _wait = campaigns.run_campaign(campaign_id=campaign.pk, budget_seconds=600)

    assert outcome == "done"
    got = sent_to(graph)
    assert len(got) == 1950 and set(got.values()) == {1}
    assert not any(phone(i) in got for i in range(50))
    first = next(p["json"] for p in graph.posts() if p["json"].get("to") == phone(77))
    assert first["template"]["components"] == [{"type": "body", "parameters": [{"type": "text", "text": "Name77"}]}]
    assert first["biz_opaque_callback_data"].startswith("campaign:")
    totals = campaigns.campaign_totals(campaign)
    assert (totals["sent"], totals["skipped"], totals["total"]) == (1950, 25, 1975)
    campaign.refresh_from_db()
    assert campaign.status == "done" and campaign.finished_at is not None


def test_a_restarted_campaign_never_sends_a_claimed_contact_again(wa_channel, graph, template, post_webhook):
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(30))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    # A worker claims 10 rows and dies before, during or after its Graph calls.
    crashed = campaigns._claim(campaign, 10)
    campaigns.run_campaign(campaign_id=campaign.pk, budget_seconds=60)  # the task runs again

    got = sent_to(graph)
    assert len(got) == 20 and set(got.values()) == {1}
    assert not any(r.contact_id in got for r in crashed)
    # Meta's status webhook for one the crashed worker did send tells us it went.
    status = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_NUMBER_ID},
        "statuses": [{"id": "wamid.CRASHED", "status": "delivered", "timestamp": str(int(time.time())),
                      "recipient_id": crashed[0].contact_id, "biz_opaque_callback_data": f"campaign:{crashed[0].pk}"}],
    }  # fmt: skip
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [{"field": "messages", "value": status}]}],
    }
    post_webhook("whatsapp", json.dumps(body).encode(), WA_SECRET)
    from channels_app.models import InboundEvent
    from channels_app.services import apply_status_update

    for row in InboundEvent.objects.filter(kind="status"):
        apply_status_update(inbound_id=row.pk)
    row = CampaignRecipient.objects.get(pk=crashed[0].pk)
    assert (row.status, row.platform_message_id) == ("delivered", "wamid.CRASHED")
    assert CampaignRecipient.objects.filter(campaign=campaign, status="sending").count() == 9


def test_statuses_move_each_recipient_forward_and_failed_is_kept(wa_channel, graph, template):
    from channels_app.adapters.base import StatusUpdate

    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(2))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    campaigns.run_campaign(campaign_id=campaign.pk)
    one, two = CampaignRecipient.objects.filter(campaign=campaign).order_by("id")

    def status(row: CampaignRecipient, value: str) -> None:
        update = StatusUpdate(platform="whatsapp", channel_external_id=WA_PHONE_NUMBER_ID,
                              message_id=row.platform_message_id, status=value, timestamp=0,
                              error={"title": "Message undeliverable"} if value == "failed" else None)  # fmt: skip
        assert campaigns.apply_status(tenant_id=row.tenant_id, update=update)

    status(one, "read")
    status(one, "delivered")  # late: never downgrades
    status(two, "failed")
    one.refresh_from_db()
    two.refresh_from_db()
    assert (one.status, two.status, two.error) == ("read", "failed", "Message undeliverable")


def test_quiet_hours_pause_and_the_daily_limit_hold_sending(wa_channel, graph, template):
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(10))
    now = timezone.now()
    quiet = campaigns.campaign_create(
        channel=wa_channel, name="Q", template=template, variables={"body": ["x"]},
        quiet_start=day_time((now.hour - 1) % 24), quiet_end=day_time((now.hour + 1) % 24),
    )  # fmt: skip
    campaigns.campaign_start(campaign=quiet)
    assert campaigns.run_campaign(campaign_id=quiet.pk)[0] == "quiet"
    campaigns.campaign_pause(campaign=quiet)
    assert campaigns.run_campaign(campaign_id=quiet.pk)[0] == "paused"
    assert graph.posts() == []

    limited = campaigns.campaign_create(
        channel=wa_channel, name="L", template=template, variables={"body": ["x"]}, daily_limit=4
    )
    campaigns.campaign_start(campaign=limited)
    outcome, wait = campaigns.run_campaign(campaign_id=limited.pk)
    assert outcome == "daily_limit" and wait > 0
    assert len(sent_to(graph)) == 4


def test_a_campaign_reaches_only_this_channels_opted_in_contacts(wa_channel, graph, template, other_tenant):
    from channels_app import services

    theirs = services.channel_create(tenant=other_tenant, type="whatsapp", name="G", external_id="9988776655")
    campaigns.consent_import_csv(channel=theirs, text=csv_of(5, start=100))
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(3))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})

    assert campaigns.campaign_start(campaign=campaign) == 3
    assert Consent.objects.filter(channel=theirs).count() == 5
    assert Campaign.objects.filter(tenant=other_tenant).count() == 0


def test_a_template_that_is_not_approved_cannot_start_a_campaign(wa_channel, graph, template):
    template.status = "PAUSED"
    template.save()
    with pytest.raises(templates.TemplateError):
        campaigns.campaign_create(channel=wa_channel, name="C", template=template)


def test_the_api_imports_opt_ins_creates_starts_pauses_and_totals_a_campaign(wa_channel, graph, template, tenant_api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    base = f"/api/tenants/{wa_channel.tenant_id}"
    upload = SimpleUploadedFile("optins.csv", csv_of(3).encode(), content_type="text/csv")
    imported = tenant_api.post(f"{base}/channels/{wa_channel.pk}/consents/import/", {"file": upload, "opt_in_source": "shop"},
                               format="multipart")  # fmt: skip
    assert imported.status_code == 200 and imported.json() == {"imported": 3, "opted_out": 0, "invalid": 0}
    consent = Consent.objects.get(contact_id=phone(1))
    assert (consent.source, consent.variables) == ("shop", {"first_name": "Name1"})

    created = tenant_api.post(
        f"{base}/channels/{wa_channel.pk}/campaigns/",
        {
            "name": "Spring",
            "template_name": "spring_offer",
            "language": "en_US",
            "variables": {"body": ["{first_name}"]},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    campaign_id = created.json()["id"]
    started = tenant_api.post(f"{base}/campaigns/{campaign_id}/start/")
    assert started.json()["status"] == "running" and started.json()["totals"]["pending"] == 3
    assert tenant_api.post(f"{base}/campaigns/{campaign_id}/pause/").json()["status"] == "paused"
    assert campaigns.run_campaign(campaign_id=campaign_id)[0] == "paused"
    tenant_api.post(f"{base}/campaigns/{campaign_id}/resume/")
    campaigns.run_campaign(campaign_id=campaign_id)

    detail = tenant_api.get(f"{base}/campaigns/{campaign_id}/").json()
    assert (detail["status"], detail["totals"]["sent"]) == ("done", 3)


def test_another_tenant_cannot_see_or_start_the_campaign(wa_channel, graph, template, api_for, other_tenant):
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    theirs = api_for(other_tenant)
    assert theirs.get(f"/api/tenants/{other_tenant.pk}/campaigns/{campaign.pk}/").status_code == 404
    assert theirs.post(f"/api/tenants/{other_tenant.pk}/campaigns/{campaign.pk}/start/").status_code == 404
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"


def test_the_admin_shows_a_campaigns_totals_and_pauses_it(wa_channel, graph, template, client):
    from tenants.services import staff_user_create

    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(3))
    campaign = campaigns.campaign_create(
        channel=wa_channel, name="Spring", template=template, variables={"body": ["x"]}
    )
    campaigns.campaign_start(campaign=campaign)
    campaigns.run_campaign(campaign_id=campaign.pk)
    owner, _ = staff_user_create(tenant=wa_channel.tenant, username="owner", role="owner", password="pw-123456789")
    client.force_login(owner)

    listing = client.get("/admin/channels_app/campaign/").content.decode()
    assert "Spring" in listing and "sent 3" in listing
    assert "1555" in client.get("/admin/channels_app/consent/").content.decode()


def test_a_message_meta_may_have_taken_is_never_posted_again_and_its_status_settles_it(wa_channel, graph, template):
    """A 5xx after the POST reached Meta: the outcome is unknown, so the recipient is not posted again
    (the Graph client's own retry included); a 429 means Meta took nothing, so that one goes later."""
    from channels_app.adapters.base import StatusUpdate

    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(3))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    graph.scripted = [
        (500, {"error": {"message": "An unknown error occurred", "type": "OAuthException", "code": 1}}),
        (429, {"error": {"message": "Rate limit hit", "type": "OAuthException", "code": 130429}}),
    ]
    for _ in range(3):
        campaigns.run_campaign(campaign_id=campaign.pk)

    first, second, third = CampaignRecipient.objects.filter(campaign=campaign).order_by("id")
    assert sent_to(graph) == {phone(0): 1, phone(1): 2, phone(2): 1}
    assert (first.status, second.status, third.status) == ("sending", "sent", "sent")
    assert first.error == "Graph API busy (1): An unknown error occurred"

    # Meta's status webhook names the row by our callback data: the unknown outcome is settled.
    update = StatusUpdate(platform="whatsapp", channel_external_id=WA_PHONE_NUMBER_ID, message_id="wamid.late",
                          status="delivered", timestamp=0,
                          raw={"biz_opaque_callback_data": f"{campaigns.CALLBACK_PREFIX}{first.pk}"})  # fmt: skip
    assert campaigns.apply_status(tenant_id=first.tenant_id, update=update)
    first.refresh_from_db()
    assert first.status == "delivered"


def test_a_campaign_starts_once_and_has_one_runner_at_a_time(wa_channel, graph, template, tenant_api):
    from django.db import connections

    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(3))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    url = f"/api/tenants/{wa_channel.tenant_id}/campaigns/{campaign.pk}/start/"
    again = tenant_api.post(url)
    assert again.status_code == 409 and again.json()["error"]["code"] == "campaign_state"

    # Another runner holds the campaign (a second worker, a racing resume): this one sends nothing.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"campaign-runner:{campaign.pk}"])
            cursor.execute("SELECT pg_backend_pid()")
            (holder,) = cursor.fetchone()
        assert campaigns.run_campaign(campaign_id=campaign.pk) == ("busy", 0.0)
        assert sent_to(graph) == {}
    finally:
        other.close()  # its lock goes with its connection, as a killed worker's does
    # ... once its server process has ended, which happens just after the disconnect (on a busy machine
    # the next line could otherwise still find the lock held).
    wait_until(lambda: not session_alive(holder))
    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "done"
    assert sum(sent_to(graph).values()) == 3


def test_a_template_paused_by_meta_pauses_the_campaign_and_fails_nobody(wa_channel, graph, template):
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(4))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    MessageTemplate.objects.filter(pk=template.pk).update(status="PAUSED")  # Meta paused it meanwhile

    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "paused"
    campaign.refresh_from_db()
    assert campaign.status == "paused" and sent_to(graph) == {}
    assert set(CampaignRecipient.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"pending"}

    MessageTemplate.objects.filter(pk=template.pk).update(status="APPROVED")
    campaigns.campaign_resume(campaign=campaign)
    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "done"
    assert sum(sent_to(graph).values()) == 4


def test_variables_that_do_not_fit_the_template_are_refused_when_the_campaign_is_made(wa_channel, template):
    with pytest.raises(campaigns.CampaignError) as refused:
        campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["a", "b"]})
    assert refused.value.code == "invalid_variables"


def test_stop_under_a_bsuid_holds_for_the_phone_number_the_campaign_knows(wa_channel, graph, template):
    """The CSV opted the phone number in; Meta names the same user by a business-scoped user id
    (BSUID) when they write STOP: they are never sent the campaign at their phone number."""
    from channels_app.adapters.base import NormalizedMessage
    from channels_app.models import ContactAlias

    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(2))
    bsuid = "US.13491208655302741918"
    for alias in (phone(0), bsuid):  # the user was first known by the BSUID (identities.resolve_senders)
        ContactAlias.objects.create(tenant_id=wa_channel.tenant_id, channel=wa_channel, alias=alias, external_id=bsuid)
    stop = NormalizedMessage(platform="whatsapp", channel_external_id=WA_PHONE_NUMBER_ID, message_id="wamid.STOP",
                             sender_id=bsuid, timestamp=time.time(), type="text", text="STOP")  # fmt: skip
    campaigns.record_opt_outs(channel=wa_channel, messages=[stop])

    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    campaigns.run_campaign(campaign_id=campaign.pk)

    assert sent_to(graph) == {phone(1): 1}


def test_the_campaign_list_is_paged_with_totals_counted_at_once(
    wa_channel, template, tenant_api, django_assert_max_num_queries
):
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(3))
    made = [
        campaigns.campaign_create(channel=wa_channel, name=f"C{n}", template=template, variables={"body": ["x"]})
        for n in range(6)
    ]
    campaigns.campaign_start(campaign=made[0])
    url = f"/api/tenants/{wa_channel.tenant_id}/channels/{wa_channel.pk}/campaigns/"

    with django_assert_max_num_queries(8):  # the same for 6 campaigns as for 1
        body = tenant_api.get(url).json()

    assert [c["name"] for c in body["results"]] == ["C5", "C4", "C3", "C2", "C1", "C0"]
    assert body["results"][-1]["totals"]["pending"] == 3 and body["results"][-1]["totals"]["total"] == 3
    assert body["results"][0]["totals"]["total"] == 0


def session_alive(pid: int) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        # A transaction reads pg_stat_activity once and keeps that view until it ends (the test runs in
        # one): clear it, or a session seen alive on the first poll stays alive for every later one.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cursor.fetchone()[0])


def campaign_events(campaign: Campaign) -> list[tuple[str, dict[str, Any]]]:
    from events.models import Event

    rows = Event.objects.filter(type__startswith="campaign.", payload__campaign_id=str(campaign.pk)).order_by("id")
    return [(e.type, e.payload) for e in rows]


def test_each_campaign_event_is_written_once_with_its_payload(wa_channel, graph, template, post_webhook):
    from events.models import Event

    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(3))
    campaign = campaigns.campaign_create(
        channel=wa_channel, name="Spring", template=template, variables={"body": ["{first_name}"]}
    )
    campaigns.campaign_start(campaign=campaign)
    campaigns.campaign_pause(campaign=campaign)
    campaigns.campaign_pause(campaign=campaign)  # a second click: nothing changes, no second event
    campaigns.campaign_resume(campaign=campaign)
    campaigns.campaign_resume(campaign=campaign)
    user_says(post_webhook, phone(1), "STOP", 1)  # skipped
    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "done"
    campaigns.run_campaign(campaign_id=campaign.pk)  # a late runner: finished already, nothing again

    events = campaign_events(campaign)
    assert [t for t, _ in events] == ["campaign.started", "campaign.paused", "campaign.resumed", "campaign.finished"]
    common = {
        "campaign_id": str(campaign.pk),
        "channel_id": str(wa_channel.pk),
        "name": "Spring",
        "template": {"name": "spring_offer", "language": "en_US"},
    }
    started, paused, resumed, finished = (payload for _, payload in events)
    assert started == {**common, "recipients": 3, "scheduled_at": None, "rate_per_second": 80.0, "daily_limit": 1000}
    assert paused == {**common, "reason": "manual", "detail": ""}
    assert resumed == common
    assert finished["totals"] == {
        "total": 3, "sent": 2, "delivered": 0, "read": 0, "failed": 0, "skipped": 1, "sending": 0,
    }  # fmt: skip
    assert finished["finished_at"]
    # Tenant-scoped: the tenant's audit log has them, with the outbox flags set for delivery.
    rows = Event.objects.filter(type__startswith="campaign.")
    assert {e.tenant_id for e in rows} == {wa_channel.tenant_id}
    assert all(e.dispatch_pending for e in rows)


def test_a_template_meta_paused_or_rejected_pauses_the_campaign_with_that_reason(wa_channel, graph, template):
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(4))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    MessageTemplate.objects.filter(pk=template.pk).update(status="PAUSED")
    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "paused"
    MessageTemplate.objects.filter(pk=template.pk).update(status="REJECTED", rejected_reason="INVALID_FORMAT")
    campaigns.campaign_resume(campaign=campaign)
    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "paused"

    events = campaign_events(campaign)
    assert [(t, p.get("reason")) for t, p in events] == [
        ("campaign.started", None),
        ("campaign.paused", "template_paused"),
        ("campaign.resumed", None),
        ("campaign.paused", "template_rejected"),
    ]
    assert "INVALID_FORMAT" in events[-1][1]["detail"]
    assert sent_to(graph) == {}


def test_a_channel_that_can_no_longer_send_pauses_the_campaign_with_channel_disabled(wa_channel, graph, template):
    campaigns.consent_import_csv(channel=wa_channel, text=csv_of(2))
    campaign = campaigns.campaign_create(channel=wa_channel, name="C", template=template, variables={"body": ["x"]})
    campaigns.campaign_start(campaign=campaign)
    from channels_app.models import Channel

    Channel.objects.filter(pk=wa_channel.pk).update(sending_disabled_reason="the access token was revoked")

    assert campaigns.run_campaign(campaign_id=campaign.pk)[0] == "paused"
    (_t, paused) = campaign_events(campaign)[-1]
    assert (_t, paused["reason"]) == ("campaign.paused", "channel_disabled")
    assert "the access token was revoked" in paused["detail"]
