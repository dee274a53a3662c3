"""Web chat replies stream token by token; the offline answerer answers from the tenant's documents."""

from __future__ import annotations

import time
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.files.base import ContentFile

from channels_app.models import Channel
from conversations.models import Message
from tests.conftest import wait_until
from tests.conversations.conftest import deliver, webchat_say


def collect(channel_name: str, until_type: str, timeout: float = 15.0) -> list[dict]:
    layer = get_channel_layer()
    events: list[dict] = []
    deadline = time.monotonic() + timeout

    async def receive_one() -> dict:
        import asyncio

        return await asyncio.wait_for(layer.receive(channel_name), timeout=max(0.1, deadline - time.monotonic()))

    while time.monotonic() < deadline:
        event = async_to_sync(receive_one)()["event"]
        events.append(event)
        if event["type"] == until_type:
            return events
    raise AssertionError(f"no {until_type} event; got {events}")


def test_webchat_reply_streams_token_by_token_and_is_stored_whole(live_worker, tenant, openai_server):
    from channels_app.adapters.webchat import visitor_group

    channel = Channel.objects.create(tenant=tenant, type="webchat", name="Site", external_id=f"wk_{uuid.uuid4().hex}")
    visitor = f"v_{uuid.uuid4().hex}"
    layer = get_channel_layer()
    inbox = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(visitor_group(channel_external_id=channel.external_id, visitor_id=visitor), inbox)
    openai_server.default = lambda body: {"content": "We open at nine every weekday."}

    webchat_say(channel, visitor, "When do you open?")

    events = collect(inbox, "stream_end")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "typing"
    assert kinds[1] == "stream_start"
    deltas = [e["delta"] for e in events if e["type"] == "stream_delta"]
    assert len(deltas) == 6
    assert "".join(deltas) == "We open at nine every weekday."
    assert events[-1]["text"] == "We open at nine every weekday."
    assert openai_server.requests[0]["stream"] is True
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert reply.content == "We open at nine every weekday."
    assert events[-1]["id"] == f"m{reply.pk}"
    assert (reply.prompt_tokens, reply.completion_tokens) == (100, 20)  # from the stream's usage chunk


POLICIES = (
    "# Returns\n\nYou can return any item within 30 days of delivery for a full refund. "
    "Items must be unused and in their original packaging.\n\n"
    "# Shipping\n\nStandard shipping takes three to five business days. Express shipping arrives next day.\n"
)


def indexed_policies(tenant, settings, tmp_path):
    from knowledge import services
    from knowledge.models import Document

    settings.MEDIA_ROOT = tmp_path / "media"
    document = services.document_upload(
        tenant=tenant, file=ContentFile(POLICIES.encode(), name="policies.md"), title="Store policies"
    )
    wait_until(lambda: Document.objects.get(pk=document.pk).status == "indexed", timeout=120)
    return document


def test_llm_answer_gets_the_passages_with_markers_and_cites_its_sources(
    live_worker, whatsapp, graph, tenant, settings, tmp_path, openai_server
):
    indexed_policies(tenant, settings, tmp_path)
    openai_server.default = lambda body: {"content": "You have 30 days to return an item [1]."}

    deliver(whatsapp, text="How many days do I have to return an item?")

    wait_until(lambda: graph.texts, timeout=30)
    system = openai_server.requests[0]["messages"][0]["content"]
    assert "Context passages:\n[1] Store policies" in system
    assert "You can return any item within 30 days of delivery for a full refund." in system
    answer = graph.text_bodies()[0]
    assert answer.startswith("You have 30 days to return an item [1].\n\nSources: Store policies")
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert [s["marker"] for s in reply.payload["sources"]] == [1]


def test_offline_answer_quotes_the_relevant_passage_with_its_source(
    live_worker, whatsapp, graph, tenant, settings, tmp_path
):
    document = indexed_policies(tenant, settings, tmp_path)

    deliver(whatsapp, text="How many days do I have to return an item?")

    wait_until(lambda: graph.texts, timeout=30)
    answer = graph.text_bodies()[0]
    assert answer.startswith("Here is what I found in Your Business's documents:")
    assert "You can return any item within 30 days of delivery for a full refund." in answer
    assert "Sources: Store policies" in answer
    assert "no AI model is connected" in answer
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert reply.payload["sources"][0]["title"] == "Store policies"
    assert reply.payload["sources"][0]["document_id"] == str(document.pk)
