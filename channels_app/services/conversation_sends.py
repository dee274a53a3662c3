"""Rich sends into a conversation (a template, options to tap, a file), stored like an agent's reply.

``conversations.services.agent_reply`` does this for text; these kinds go through here: the message is
stored first (sender ``agent``, its ``kind``, the text the contact reads), the conversation moves to
``agent`` (the bot stays quiet; a resolved one reopens), then the send runs; a refusal by the platform
leaves the message ``failed`` with the reason and ``message.failed``, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from django.db import transaction
from django.utils import timezone

from channels_app.adapters.base import Choices, InteractiveAdapter, SendError, SendResult, get_adapter


def conversation_send(
    *,
    tenant: Any,
    conversation: Any,
    kind: str,
    text: str,
    payload: dict[str, Any],
    send: Callable[[], SendResult],
    user: Any = None,
) -> Any:
    """Store the agent's message of ``kind``, run ``send`` and record its outcome. Returns the Message."""
    from conversations import state
    from conversations.models import Conversation, Message
    from events.services import emit
    from events.types import EventType

    actor = f"agent:{getattr(user, 'username', '') or 'api'}"
    channel = conversation.channel
    with transaction.atomic():
        state.transition(conversation=conversation, to=Conversation.State.AGENT, reason=f"agent {kind}", actor=actor)
        message = Message.objects.create(
            tenant_id=tenant.pk,
            conversation=conversation,
            channel_id=channel.pk,
            direction=Message.Direction.OUTBOUND,
            sender=Message.Sender.AGENT,
            kind=kind,
            content=text,
            payload=payload,
            status=Message.Status.QUEUED,
            agent_user=user if getattr(user, "pk", None) else None,
        )
    error = ""
    try:
        result = send()
        message.platform_message_id = result.platform_message_ids[0] if result.platform_message_ids else ""
    except SendError as exc:
        error = str(exc)
    event = {
        "conversation_id": str(conversation.pk),
        "message_id": message.pk,
        "channel_id": str(channel.pk),
        "platform": channel.type,
        "sender": message.sender,
        "kind": kind,
    }
    with transaction.atomic():
        message.status = Message.Status.FAILED if error else Message.Status.SENT
        message.error = {"stage": "send", "message": error} if error else {}
        message.save(update_fields=["platform_message_id", "status", "error", "updated_at"])
        Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now())
        if error:
            emit(tenant=tenant, type=EventType.MESSAGE_FAILED, payload={**event, "stage": "send", "message": error})
        else:
            emit(
                tenant=tenant,
                type=EventType.MESSAGE_SENT,
                payload={**event, "platform_message_id": message.platform_message_id, "text": text},
            )
    return message


def conversation_send_choices(*, tenant: Any, conversation: Any, choices: Choices, user: Any = None) -> Any:
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
