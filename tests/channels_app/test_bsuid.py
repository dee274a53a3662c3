"""Business-scoped user ids (BSUID, 2026): a WhatsApp contact is one contact whether Meta names them by
phone number, by BSUID or both, through the signed webhook; statuses carrying only recipient_user_id
still apply; a contact known only by BSUID is written to with ``recipient``."""

from __future__ import annotations

import json
import time
from typing import Any

from channels_app import services
from channels_app.adapters.whatsapp import WhatsAppAdapter
from channels_app.models import ContactAlias
from tests.channels_app.conftest import WA_PHONE_NUMBER_ID, WA_SECRET, inbound_from, stored_messages

PHONE = "16505551234"
BSUID = "US.13491208655302741918"


def message(n: int, *, phone: str | None = PHONE, bsuid: str | None = BSUID, username: str = "") -> bytes:
    contact: dict[str, Any] = {"profile": {"name": "Sam", **({"username": username} if username else {})}}
    item: dict[str, Any] = {
        "id": f"wamid.B{n}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": f"hi {n}"},
    }
    if phone:
        contact["wa_id"], item["from"] = phone, phone
    if bsuid:
        contact["user_id"], item["from_user_id"] = bsuid, bsuid
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_NUMBER_ID},
        "contacts": [contact],
        "messages": [item],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body).encode()


def senders(channel) -> list[str]:
    return [m["sender_id"] for m in stored_messages(channel)]


def test_phone_and_bsuid_then_bsuid_alone_is_one_contact(wa_channel, post_webhook):
    assert post_webhook("whatsapp", message(1), WA_SECRET).status_code == 200
    assert post_webhook("whatsapp", message(2, phone=None, username="@sam"), WA_SECRET).status_code == 200

    assert senders(wa_channel) == [PHONE, PHONE]
    assert [m["sender_name"] for m in stored_messages(wa_channel)] == ["Sam", "Sam"]
    aliases = dict(ContactAlias.objects.filter(channel=wa_channel).values_list("alias", "external_id"))
    assert aliases == {PHONE: PHONE, BSUID: PHONE}


def test_bsuid_alone_first_stays_the_key_when_the_phone_appears(wa_channel, post_webhook):
    post_webhook("whatsapp", message(1, phone=None), WA_SECRET)
    post_webhook("whatsapp", message(2), WA_SECRET)
    post_webhook("whatsapp", message(3, phone=None), WA_SECRET)

    assert senders(wa_channel) == [BSUID, BSUID, BSUID]


def test_the_mapping_is_read_from_the_database_by_another_process(wa_channel, post_webhook):
    from channels_app.services import identities

    post_webhook("whatsapp", message(1), WA_SECRET)
    identities.forget_cache()  # as a second daphne process would start
    post_webhook("whatsapp", message(2, phone=None), WA_SECRET)
    assert senders(wa_channel) == [PHONE, PHONE]


def test_the_same_bsuid_on_another_tenants_number_is_their_own_contact(wa_channel, post_webhook, other_tenant):
    theirs = services.channel_create(tenant=other_tenant, type="whatsapp", name="Globex", external_id="9988776655")
    services.channel_set_credentials(channel=theirs, credentials={"app_secret": WA_SECRET})
    post_webhook("whatsapp", message(1), WA_SECRET)  # ours: phone + BSUID
    body = message(2, phone=None).replace(WA_PHONE_NUMBER_ID.encode(), b"9988776655")
    assert post_webhook("whatsapp", body, WA_SECRET).status_code == 200

    assert senders(theirs) == [BSUID]  # our mapping to the phone number does not leak to them
    assert not ContactAlias.objects.filter(channel=theirs, external_id=PHONE).exists()


def test_a_status_with_only_recipient_user_id_is_read():
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_NUMBER_ID},
            "contacts": [{"user_id": BSUID}],
            "statuses": [{"id": "wamid.OUT7", "status": "delivered", "timestamp": "1767225600",
                          "recipient_user_id": BSUID}],
        }}]}],
    }  # fmt: skip
    [status] = WhatsAppAdapter().parse(payload).statuses
    assert (status.message_id, status.status, status.recipient_id) == ("wamid.OUT7", "delivered", BSUID)


def test_a_contact_known_only_by_bsuid_is_written_to_with_recipient(wa_channel, graph):
    inbound_from(wa_channel, BSUID, hours_ago=1)
    services.send_reply(channel=wa_channel, recipient_id=BSUID, text="Hello Sam")
    [post] = graph.posts()
    assert post["json"]["recipient"] == BSUID
    assert "to" not in post["json"]
