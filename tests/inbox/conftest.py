"""Inbox fixtures: the conversations area's (local Graph API and OpenAI servers, a WhatsApp channel),
agents of a tenant, and conversations made directly."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from channels_app.models import Channel
from conversations.models import Contact, Conversation, Message
from tenants.models import Membership, Tenant
from tests.conversations.conftest import _turn_settings, graph, openai_server, whatsapp  # noqa: F401
from tests.webchat.conftest import _fresh_channel_layer, daphne_servers  # noqa: F401


@pytest.fixture
def make_agent(db: Any) -> Callable[..., Any]:
    def make(tenant: Tenant, username: str, **fields: Any) -> Any:
        user = get_user_model().objects.create_user(
            username=username, password="pw-" + username, is_staff=True, **fields
        )
        Membership.objects.create(tenant=tenant, user=user, role=Membership.Role.AGENT)
        return user

    return make


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_conversation(
    tenant: Tenant, *, channel: Channel | None = None, external_id: str = "", name: str = "", state: str = "bot",
    texts: tuple[str, ...] = ("hello",),
) -> Conversation:  # fmt: skip
    """A conversation with the user's messages (as intake stores them)."""
    if channel is None:
        channel = Channel.objects.create(
            tenant=tenant, type="webchat", name="Site", external_id=f"wk_{uuid.uuid4().hex}", config={}
        )
    contact = Contact.objects.create(
        tenant=tenant, channel=channel, external_id=external_id or f"v_{uuid.uuid4().hex}", profile_name=name
    )
    conversation = Conversation.objects.create(tenant=tenant, channel=channel, contact=contact, state=state)
    for text in texts:
        Message.objects.create(
            tenant=tenant, conversation=conversation, channel=channel, direction="in", sender="user", content=text,
            platform_message_id=f"c_{uuid.uuid4().hex}",
        )  # fmt: skip
    return conversation
