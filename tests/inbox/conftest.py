"""Inbox fixtures: the conversations area's (local Graph API and OpenAI servers, a WhatsApp channel)."""

from tests.conversations.conftest import _turn_settings, graph, openai_server, whatsapp  # noqa: F401
