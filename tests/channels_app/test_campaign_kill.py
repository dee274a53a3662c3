"""A campaign to 2,000 opted-in contacts at 80 messages/s, its Celery worker process SIGKILLed midway:
a new worker (its beat resumes the stalled campaign) finishes it, nobody gets the campaign twice, the
50 who sent STOP get nothing, and only the batch the killed worker had claimed is left unconfirmed."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from channels_app.models import CampaignRecipient, MessageTemplate
from channels_app.services import campaigns, templates
from tests.channels_app.conftest import WA_PHONE_NUMBER_ID, WA_SECRET, WA_WABA_ID
from tests.channels_app.test_campaigns import PROMO
from tests.conftest import wait_until
from tests.security.test_faults import celery_worker, processes  # noqa: F401  (fixture)


def phone(i: int) -> str:
    return f"1555{i:07d}"


def templated(graph: Any) -> Counter:
    with graph.lock:
        posts = list(graph.requests)
    return Counter(
        p["json"]["to"] for p in posts if p["method"] == "POST" and (p["json"] or {}).get("type") == "template"
    )


def stop_from(post_webhook: Any, i: int) -> None:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_NUMBER_ID},
        "messages": [{"from": phone(i), "id": f"wamid.STOP{i}", "timestamp": str(int(time.time())), "type": "text",
                      "text": {"body": "STOP"}}],
    }  # fmt: skip
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [{"field": "messages", "value": value}]}],
    }
    assert post_webhook("whatsapp", json.dumps(body).encode(), WA_SECRET).status_code == 200


def test_a_campaign_survives_its_worker_being_sigkilled(processes, wa_channel, graph, post_webhook):  # noqa: F811
    graph.templates[WA_WABA_ID] = [PROMO]
    templates.templates_sync(channel=wa_channel)
    csv_text = "contact,first_name\n" + "".join(f"{phone(i)},N{i}\n" for i in range(2000))
    campaigns.consent_import_csv(channel=wa_channel, text=csv_text)
    for i in range(50):
        stop_from(post_webhook, i)
    campaign = campaigns.campaign_create(
        channel=wa_channel, name="Spring", template=MessageTemplate.objects.get(), variables={"body": ["{first_name}"]},
        rate_per_second=80, daily_limit=10_000,
    )  # fmt: skip
    assert campaigns.campaign_start(campaign=campaign) == 1950  # enqueues the runner after commit

    doomed = celery_worker(processes, "doomed")
    wait_until(lambda: sum(templated(graph).values()) >= 600, timeout=120)
    doomed.sigkill()
    at_kill = sum(templated(graph).values())
    assert at_kill < 1950

    celery_worker(processes, "replacement", beat=True, threads=2, CAMPAIGN_STALL_SECONDS="3")
    wait_until(lambda: campaigns.campaign_totals(campaign)["pending"] == 0, timeout=180)
    wait_until(lambda: campaign.__class__.objects.get(pk=campaign.pk).status == "done", timeout=60)

    got = templated(graph)
    assert set(got.values()) == {1}  # nobody twice
    assert not any(phone(i) in got for i in range(50))  # STOP honoured
    totals = campaigns.campaign_totals(campaign)
    unconfirmed = CampaignRecipient.objects.filter(campaign=campaign, status="sending").count()
    assert totals["sent"] + unconfirmed == 1950
    assert unconfirmed <= 80  # at most the batch the killed worker had claimed
    assert len(got) >= totals["sent"]  # every row recorded sent reached the Graph API
