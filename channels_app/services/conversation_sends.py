"""Rich sends into a conversation (a template, options to tap, a file), stored as an agent's message.

channels_app checks what the platform accepts (nothing is stored when it refuses); the core stores,
sends and records: ``conversations.services.agent_send``, the same path as an agent's text reply. The
message is stored first (sender ``agent``, its ``kind``, the text the contact reads), the conversation
moves to ``agent``, then the send runs; a refusal by the platform leaves the message ``failed`` with
the reason and ``message.failed``, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from channels_app.adapters.base import Choices, InteractiveAdapter, SendResult, get_adapter

if TYPE_CHECKING:
    from conversations.models import Message


def conversation_send(
    *,
    tenant: Any,
    conversation: Any,
    kind: str,
    text: str,
    payload: dict[str, Any],
    send: Callable[[], SendResult],
    user: Any = None,
) -> Message:
    """The agent's message of ``kind``, stored, sent by ``send`` and recorded by the core. Imported at
    call time: conversations sits above channels_app."""
    from conversations.services import agent_send

    return agent_send(
        tenant=tenant,
        conversation=conversation,
        kind=kind,
        text=text,
        payload=payload,
        user=user,
        send=lambda _message: send(),
    )


def conversation_send_choices(*, tenant: Any, conversation: Any, choices: Choices, user: Any = None) -> Message:
    """An agent offers options to tap. Refused before anything is stored when the platform cannot show
    them (InvalidChoices) or the window has closed (OutsideWindow)."""
    from channels_app.services import sending, window

    channel = conversation.channel
    recipient = conversation.contact.external_id
    choices = replace(choices, from_agent=True)
    adapter = get_adapter(channel.type)
    if isinstance(adapter, InteractiveAdapter):
        adapter.check_choices(choices)
    if not channel.sending_disabled_reason:
        window.free_form_tag(channel=channel, recipient_id=recipient, human=False)
    return conversation_send(
        tenant=tenant,
        conversation=conversation,
        kind="choices",
        text=sending.choices_as_text(choices),
        payload={"choices": asdict(choices)},
        user=user,
        send=lambda: sending.send_choices(channel=channel, recipient_id=recipient, choices=choices),
    )
