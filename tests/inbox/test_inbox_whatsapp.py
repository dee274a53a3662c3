"""A WhatsApp contact in the inbox: messages reach the tenant's agents live, the agent's reply and the
closing satisfaction question reach the Graph API, and the contact's "4" is stored as the rating."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from conversations.inbox import live, services
from conversations.models import Conversation, SatisfactionRating
from tests.conftest import wait_until
from tests.conversations.conftest import deliver


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
    assert sent[-1].startswith("This conversation is now closed.")
    assert "from 1 (not at all) to 5" in sent[-1]

    deliver(whatsapp, text="4")

    rating = wait_until(lambda: SatisfactionRating.objects.first())
    assert (rating.score, rating.agent_id) == (4, amy.pk)
    wait_until(lambda: graph.text_bodies()[-1] == "Thank you for your feedback!")
    assert wait_until(lambda: Conversation.objects.get().state == "resolved")
    assert openai_server.requests == []  # the bot did not answer the "4"
