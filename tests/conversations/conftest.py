"""Fixtures of the conversation tests: a WhatsApp channel whose Graph API is a local server, a local
OpenAI-compatible server, a way to deliver a user's message as the platform would, and a stored
conversation of a user's messages and a bot's reply."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import transaction

from channels_app.adapters.base import NormalizedMessage
from channels_app.inbound import record_inbound
from channels_app.models import Channel
from channels_app.secrets import channel_secret_set
from config.openai_clients import reset_clients
from conversations.models import Contact, Conversation, Message
from tests.conversations.servers import GraphRecorder, OpenAIScript, graph_handler, openai_handler
from tests.payloads import whatsapp_payload

APP_SECRET = "test-app-secret"
_wamids = itertools.count(1)


@pytest.fixture(autouse=True)
def _turn_settings(settings: Any) -> Iterator[None]:
    settings.TURN_DEBOUNCE_SECONDS = 0
    settings.LLM_MAX_RETRIES = 0
    settings.LLM_TIMEOUT_SECONDS = 5
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    reset_clients()
    yield
    reset_clients()


@pytest.fixture
def graph(local_http_server: Callable[..., Any], settings: Any) -> GraphRecorder:
    recorder = GraphRecorder()
    server = local_http_server(graph_handler(recorder))
    settings.GRAPH_API_BASE_URL = server.url
    recorder.url = server.url  # type: ignore[attr-defined]
    return recorder


def make_whatsapp(tenant: Any, prefix: str = "1065") -> Channel:
    """A WhatsApp channel signed with ``APP_SECRET``; a number of its own per call, so the webhook's
    route cache never sees a channel of another test."""
    phone_number_id = f"{prefix}{next(_wamids)}{time.time_ns() % 10**9}"
    channel = Channel.objects.create(
        tenant=tenant,
        type=Channel.Type.WHATSAPP,
        name="Support line",
        external_id=phone_number_id,
        config={"phone_number_id": phone_number_id, "display_phone_number": "15550001111"},
    )
    channel_secret_set(
        channel=channel, values={"app_secret": APP_SECRET, "access_token": "EAAtest", "verify_token": "vt"}
    )
    return channel


@pytest.fixture
def whatsapp(tenant: Any, graph: GraphRecorder) -> Channel:
    return make_whatsapp(tenant)


def webchat_say(channel: Channel, visitor: str, text: str) -> None:
    """A web chat visitor's message, recorded as the socket consumer records it."""
    message = NormalizedMessage(
        platform="webchat", channel_external_id=channel.external_id, message_id=f"c_{uuid.uuid4().hex}",
        sender_id=visitor, timestamp=time.time(), type="text", text=text,
    )  # fmt: skip
    with transaction.atomic():
        record_inbound(channel=channel, messages=[message])


def conversation_with_texts(channel: Channel, texts: list[str], *, reply: str) -> Conversation:
    """A new contact's conversation on ``channel``, stored directly: the user's ``texts``, then the bot's
    ``reply``."""
    contact = Contact.objects.create(
        tenant_id=channel.tenant_id, channel=channel, external_id=f"c{Contact.objects.count()}"
    )
    conversation = Conversation.objects.create(tenant_id=channel.tenant_id, channel=channel, contact=contact)
    said = [(Message.Direction.INBOUND, Message.Sender.USER, text) for text in texts]
    for direction, sender, content in [*said, (Message.Direction.OUTBOUND, Message.Sender.ASSISTANT, reply)]:
        Message.objects.create(
            tenant_id=channel.tenant_id,
            conversation=conversation,
            channel=channel,
            direction=direction,
            sender=sender,
            content=content,
        )
    return conversation


@pytest.fixture
def openai_server(local_http_server: Callable[..., Any], settings: Any) -> OpenAIScript:
    """The deployment default LLM points at a local server speaking chat completions."""
    script = OpenAIScript()
    server = local_http_server(openai_handler(script))
    settings.OPENAI_API_KEY = "sk-test-deployment-key"
    settings.OPENAI_BASE_URL = server.url + "/v1"
    script.url = server.url + "/v1"  # type: ignore[attr-defined]
    return script


def deliver(channel: Channel, *, text: str, sender: str = "15551234567", wamid: str | None = None) -> str:
    """A user's WhatsApp message reaches the platform through the real signed webhook view."""
    from django.test import Client

    wamid = wamid or f"wamid.in{next(_wamids)}.{time.time_ns()}"
    body = json.dumps(
        whatsapp_payload(phone_number_id=channel.external_id, sender=sender, text=text, wamid=wamid)
    ).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = Client().post(
        "/webhooks/whatsapp", data=body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=signature
    )
    assert response.status_code == 200, response.content
    return wamid
