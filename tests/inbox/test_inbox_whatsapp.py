"""A WhatsApp contact in the inbox: messages reach the tenant's agents live, the agent's reply and the
closing satisfaction question reach the Graph API, and the contact's "4" is stored as the rating."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from conversations.inbox import live, services
from conversations.models import Conversation, SatisfactionRating
from events.models import Event
from tests.conftest import wait_until
from tests.conversations.conftest import APP_SECRET, deliver, whatsapp_payload


def frames_until(channel_name: str, predicate, timeout: float = 15.0) -> list[dict]:
    layer = get_channel_layer()
    frames: list[dict] = []
    deadline = time.monotonic() + timeout

    async def one() -> dict:
        return await asyncio.wait_for(layer.receive(channel_name), timeout=max(0.1, deadline - time.monotonic()))

    while time.monotonic() < deadline:
        frame = async_to_sync(one)()["event"]
        frames.append(frame)
        if predicate(frame):
            return frames
    raise AssertionError(f"not seen; got {frames}")


def tap_rating(channel, option_id: str, title: str, sender: str = "15551234567") -> None:
    """The contact taps a row of the list (an interactive list_reply, through the signed webhook)."""
    import hashlib
    import hmac
    import json

    from django.test import Client

    payload = whatsapp_payload(
        phone_number_id=channel.external_id, sender=sender, text="", wamid=f"wamid.tap.{time.time_ns()}"
    )
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["text"]
    message["type"] = "interactive"
    message["interactive"] = {"type": "list_reply", "list_reply": {"id": option_id, "title": title}}
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = Client().post(
        "/webhooks/whatsapp", data=body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=signature
    )
    assert response.status_code == 200, response.content


def test_whatsapp_messages_reach_the_inbox_live_and_the_rating_is_stored(
    live_worker, whatsapp, graph, openai_server, tenant, make_agent
):
    amy = make_agent(tenant, "amy", first_name="Amy")
    layer = get_channel_layer()
    agent_socket = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(live.tenant_group(tenant.pk), agent_socket)

    deliver(whatsapp, text="human please")

    frames = frames_until(agent_socket, lambda f: f["type"] == "conversation" and f.get("handoff"))
    received = [f for f in frames if f["type"] == "message" and f["message"]["direction"] == "in"]
    assert received[0]["message"]["text"] == "human please"
    conversation = Conversation.objects.get()
    assert conversation.state == "handoff_requested"
    assert conversation.waiting_since is not None
    wait_until(lambda: graph.texts)  # the handoff notice (sent after the state change the agents saw)

    services.assign(tenant=tenant, conversation=conversation, assignee=amy, by=amy)
    services.reply(tenant=tenant, conversation=conversation, text="Hi, Amy here", user=amy)
    frames_until(agent_socket, lambda f: f["type"] == "message" and f["message"]["text"] == "Hi, Amy here")
    services.resolve(tenant=tenant, conversation=Conversation.objects.get(), user=amy)
    sent = graph.text_bodies()
    assert sent[1:3] == ["Amy joined the conversation.", "Hi, Amy here"], sent
    assert sent[-1] == "This conversation is now closed. Thank you for contacting us!"
    # The question as a list of five options to tap (WhatsApp has at most three reply buttons).
    question = graph.requests[-1]["body"]
    assert question["type"] == "interactive"
    assert "from 1 (not at all) to 5" in question["interactive"]["body"]["text"]
    rows = question["interactive"]["action"]["sections"][0]["rows"]
    assert [(r["id"], r["title"]) for r in rows] == [(f"csat:{n}", str(n)) for n in range(1, 6)]

    tap_rating(whatsapp, "csat:4", "4")

    rating = wait_until(lambda: SatisfactionRating.objects.first())
    assert (rating.score, rating.agent_id) == (4, amy.pk)
    wait_until(lambda: graph.text_bodies()[-1] == "Thank you for your feedback!")
    assert wait_until(lambda: Conversation.objects.get().state == "resolved")
    assert openai_server.requests == []  # the bot did not answer the tap
    # The answer did not reopen the conversation for the bot (the last state change is the resolve).
    states = [e.payload["state"] for e in Event.objects.filter(type="conversation.updated").order_by("id")]
    assert states == ["handoff_requested", "agent", "resolved"]


def test_a_written_digit_also_answers_the_question(live_worker, whatsapp, graph, openai_server, tenant, make_agent):
    amy = make_agent(tenant, "amy")
    deliver(whatsapp, text="help")
    conversation = wait_until(lambda: Conversation.objects.filter(state="handoff_requested").first())
    services.resolve(tenant=tenant, conversation=conversation, user=amy)

    deliver(whatsapp, text="5/5")

    assert wait_until(lambda: SatisfactionRating.objects.first()).score == 5
    wait_until(lambda: graph.text_bodies()[-1] == "Thank you for your feedback!")
    deliver(whatsapp, text="3")  # answered already: an ordinary message, the bot answers it
    wait_until(lambda: openai_server.requests)
    assert SatisfactionRating.objects.count() == 1


def test_messenger_gets_the_question_as_five_quick_replies(graph, tenant, make_agent):
    from channels_app.adapters.base import NormalizedMessage
    from channels_app.inbound import record_inbound
    from channels_app.models import Channel
    from channels_app.secrets import channel_secret_set
    from tests.inbox.conftest import make_conversation

    page = Channel.objects.create(tenant=tenant, type="messenger", name="Page", external_id="555000111")
    channel_secret_set(channel=page, values={"app_secret": "s", "access_token": "EAApage", "verify_token": "v"})
    psid = "7001002003"
    message = NormalizedMessage(
        platform="messenger", channel_external_id=page.external_id, message_id="m_1", sender_id=psid,
        timestamp=time.time(), type="text", text="human please",
    )  # fmt: skip
    record_inbound(channel=page, messages=[message])  # the contact wrote: the window is open
    conversation = make_conversation(tenant, channel=page, external_id=psid, state="agent")
    amy = make_agent(tenant, "amy")

    services.resolve(tenant=tenant, conversation=conversation, user=amy)

    sent = graph.requests[-1]["body"]
    assert sent["recipient"] == {"id": psid}
    assert "from 1 (not at all) to 5" in sent["message"]["text"]
    replies = sent["message"]["quick_replies"]
    assert [(r["title"], r["payload"]) for r in replies] == [(str(n), f"csat:{n}") for n in range(1, 6)]
    assert services.rating_answer(["csat:3"], "3") == 3
    assert services.rating_answer(["csat:9"], "whatever") is None


def test_an_agent_typing_shows_the_whatsapp_contact_our_typing_indicator(graph, whatsapp, tenant, make_agent, settings):
    from tests.channels_app.conftest import inbound_from
    from tests.inbox.conftest import make_conversation

    settings.WHATSAPP_TYPING_INDICATOR = True
    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant, channel=whatsapp, external_id="15550009999", state="agent", texts=())
    conversation.messages.create(
        tenant=tenant, channel=whatsapp, direction="in", sender="user", content="hi", platform_message_id="wamid.LAST"
    )
    inbound_from(whatsapp, "15550009999", message_id="wamid.LAST")  # as intake records it: the window is open

    services.agent_typing(tenant=tenant, conversation=conversation, user=amy, on=True)

    body = graph.requests[-1]["body"]
    assert (body["status"], body["message_id"], body["typing_indicator"]) == ("read", "wamid.LAST", {"type": "text"})
