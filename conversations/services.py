"""Conversation operations for agents, integrators and admins: an agent's message (a text reply here;
templates, choices and files from channels_app), resolve, return to the bot, retry a failed turn, and
tenant function management. Plain functions, explicit tenant."""

from __future__ import annotations

import secrets as random_secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from channels_app.adapters.base import SendError, SendResult
from conversations import outbound, state
from conversations.models import Conversation, Message, TenantFunction
from conversations.tools import FunctionDefinitionError, validate_definition
from events.services import emit
from events.types import EventType
from tenants import secrets as secret_service
from tenants.models import Tenant


def _check_owner(tenant: Tenant, conversation: Conversation) -> None:
    if conversation.tenant_id != tenant.pk:
        raise Conversation.DoesNotExist


def check_reply_window(conversation: Conversation) -> None:
    """Raise OutsideWindow (``outside_customer_service_window``) when no free-form message from a human
    agent may reach the contact now, before anything is stored or sent: the agent sends an approved
    template instead. A Messenger reply within 7 days goes with the HUMAN_AGENT tag. A channel whose
    sending is disabled is not checked: the reply is then kept failed with that reason."""
    from channels_app.services import window

    channel = conversation.channel
    if not channel.sending_disabled_reason:
        window.free_form_tag(channel=channel, recipient_id=conversation.contact.external_id, human=True)


def agent_reply(*, tenant: Tenant, conversation: Conversation, text: str, user: Any = None) -> Message:
    """Send ``text`` to the contact as a human agent (``agent_send``, kind ``text``)."""
    _check_owner(tenant, conversation)
    text = text.strip()
    if not text:
        raise ValueError("the reply is empty")
    channel = conversation.channel
    recipient = conversation.contact.external_id
    return agent_send(
        tenant=tenant,
        conversation=conversation,
        kind="text",
        text=text,
        user=user,
        send=lambda message: outbound.send_text(
            channel=channel, recipient_id=recipient, text=text, message_id=message.pk, role="agent"
        ),
    )


def agent_send(
    *,
    tenant: Tenant,
    conversation: Conversation,
    kind: str,
    text: str,
    send: Callable[[Message], SendResult],
    payload: dict[str, Any] | None = None,
    user: Any = None,
) -> Message:
    """An agent's message to the contact, of any kind: the text reply above, and channels_app's rich
    sends (template, choices, a file), which check what the platform accepts and hand ``send`` here.

    The message is stored first (sender ``agent``, ``kind``, ``text`` as the contact reads it, ``payload``)
    and the conversation moves to ``agent`` (the bot stays quiet; a resolved one reopens); then ``send``
    runs with the stored message. A refusal (SendError) leaves the message ``failed`` with the reason and
    emits ``message.failed`` rather than raising; else it is ``sent`` with the platform's id (all of them
    in ``payload.platform_message_ids`` when the send took several messages, so any one's status finds
    the row) and ``message.sent``. Either way the agent has answered: the inbox's waiting time stops
    (until the contact writes again)."""
    _check_owner(tenant, conversation)
    actor = f"agent:{getattr(user, 'username', '') or 'api'}"
    reason = "agent replied" if kind == "text" else f"agent {kind}"
    with transaction.atomic():
        state.transition(conversation=conversation, to=Conversation.State.AGENT, reason=reason, actor=actor)
        message = Message.objects.create(
            tenant_id=tenant.pk,
            conversation=conversation,
            channel_id=conversation.channel_id,
            direction=Message.Direction.OUTBOUND,
            sender=Message.Sender.AGENT,
            kind=kind,
            content=text,
            payload=payload or {},
            status=Message.Status.QUEUED,
            agent_user=user if getattr(user, "pk", None) else None,
        )
    error = ""
    try:
        platform_ids = send(message).platform_message_ids
        message.platform_message_id = platform_ids[0] if platform_ids else ""
        if len(platform_ids) > 1:
            message.payload = {**message.payload, "platform_message_ids": list(platform_ids)}
    except SendError as exc:
        error = str(exc)
    channel = conversation.channel
    event: dict[str, Any] = {
        "conversation_id": str(conversation.pk),
        "message_id": message.pk,
        "channel_id": str(channel.pk),
        "platform": channel.type,
        "sender": message.sender,
        "kind": kind,
    }
    if getattr(user, "pk", None):
        event["agent"] = {"id": user.pk, "name": (user.get_full_name() or "").strip() or user.get_username()}
    now = timezone.now()
    with transaction.atomic():
        message.status = Message.Status.FAILED if error else Message.Status.SENT
        message.error = {"stage": "send", "message": error} if error else {}
        message.save(update_fields=["platform_message_id", "payload", "status", "error", "updated_at"])
        Conversation.objects.filter(pk=conversation.pk, tenant_id=tenant.pk).update(
            last_activity_at=now, waiting_since=None
        )
        conversation.last_activity_at, conversation.waiting_since = now, None
        if error:
            emit(tenant=tenant, type=EventType.MESSAGE_FAILED, payload={**event, "stage": "send", "message": error})
        else:
            emit(
                tenant=tenant,
                type=EventType.MESSAGE_SENT,
                payload={**event, "platform_message_id": message.platform_message_id, "text": text},
            )
    return message


def conversation_resolve(*, tenant: Tenant, conversation: Conversation, actor: str = "agent") -> Conversation:
    _check_owner(tenant, conversation)
    return state.transition(conversation=conversation, to=Conversation.State.RESOLVED, reason="resolved", actor=actor)


def conversation_return_to_bot(*, tenant: Tenant, conversation: Conversation, actor: str = "agent") -> Conversation:
    """The bot answers again, with context starting after everything said so far."""
    _check_owner(tenant, conversation)
    return state.transition(conversation=conversation, to=Conversation.State.BOT, reason="returned to bot", actor=actor)


def conversation_request_handoff(*, tenant: Tenant, conversation: Conversation, actor: str = "api") -> Conversation:
    _check_owner(tenant, conversation)
    return state.transition(
        conversation=conversation, to=Conversation.State.HANDOFF_REQUESTED, reason="requested by " + actor, actor=actor
    )


def conversation_retry(*, tenant: Tenant, conversation: Conversation) -> int:
    """Queue another turn for user messages whose turn failed (LLM down). Returns how many."""
    _check_owner(tenant, conversation)
    with transaction.atomic():
        count = (
            Message.objects.for_tenant(tenant)
            .filter(conversation=conversation, sender=Message.Sender.USER, status=Message.Status.FAILED)
            .update(status=Message.Status.RECEIVED, error={}, updated_at=timezone.now())
        )
        if count:
            from conversations.tasks import retry_turn

            conversation_id = str(conversation.pk)
            transaction.on_commit(lambda: retry_turn.delay(conversation_id))
    return count


# --- tenant functions -----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class CreatedFunction:
    function: TenantFunction
    signing_secret: str  # shown once

    def __repr__(self) -> str:
        return f"<CreatedFunction {self.function.name}>"


def _signing_secret_name(name: str) -> str:
    return f"function.{name}.signing"


def function_create(
    *,
    tenant: Tenant,
    name: str,
    description: str,
    endpoint_url: str,
    parameters: dict[str, Any] | None = None,
    timeout_seconds: float = 10.0,
    auth_header_name: str = "",
    auth_secret_name: str = "",
    is_active: bool = True,
) -> CreatedFunction:
    """Validate and create; a signing secret is generated, stored encrypted and returned once."""
    parameters = parameters if parameters is not None else {"type": "object", "properties": {}}
    validate_definition(name=name, parameters=parameters, endpoint_url=endpoint_url, timeout_seconds=timeout_seconds)
    if TenantFunction.objects.for_tenant(tenant).filter(name=name).exists():
        raise FunctionDefinitionError({"name": [f"a function named '{name}' already exists"]})
    if auth_secret_name and (problem := secret_service.secret_reference_problem(tenant=tenant, name=auth_secret_name)):
        raise FunctionDefinitionError({"auth_secret_name": [problem]})
    signing_secret = "whsec_" + random_secrets.token_urlsafe(32)
    with transaction.atomic():
        secret_name = _signing_secret_name(name)
        secret_service.tenant_secret_set(tenant=tenant, name=secret_name, value=signing_secret)
        function = TenantFunction.objects.create(
            tenant=tenant,
            name=name,
            description=description,
            parameters=parameters,
            endpoint_url=endpoint_url,
            timeout_seconds=timeout_seconds,
            auth_header_name=auth_header_name,
            auth_secret_name=auth_secret_name,
            signing_secret_name=secret_name,
            is_active=is_active,
        )
    return CreatedFunction(function=function, signing_secret=signing_secret)


def function_update(*, tenant: Tenant, function: TenantFunction, **changes: Any) -> TenantFunction:
    if function.tenant_id != tenant.pk:
        raise TenantFunction.DoesNotExist
    allowed = {
        "description",
        "parameters",
        "endpoint_url",
        "timeout_seconds",
        "auth_header_name",
        "auth_secret_name",
        "is_active",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise FunctionDefinitionError({k: ["cannot be changed"] for k in sorted(unknown)})
    for key, value in changes.items():
        setattr(function, key, value)
    validate_definition(
        name=function.name,
        parameters=function.parameters,
        endpoint_url=function.endpoint_url,
        timeout_seconds=function.timeout_seconds,
    )
    if function.auth_secret_name and (
        problem := secret_service.secret_reference_problem(tenant=tenant, name=function.auth_secret_name)
    ):
        raise FunctionDefinitionError({"auth_secret_name": [problem]})
    function.save()
    return function


def function_rotate_signing_secret(*, tenant: Tenant, function: TenantFunction) -> str:
    if function.tenant_id != tenant.pk:
        raise TenantFunction.DoesNotExist
    signing_secret = "whsec_" + random_secrets.token_urlsafe(32)
    with transaction.atomic():
        name = function.signing_secret_name or _signing_secret_name(function.name)
        secret_service.tenant_secret_set(tenant=tenant, name=name, value=signing_secret)
        if function.signing_secret_name != name:
            function.signing_secret_name = name
            function.save(update_fields=["signing_secret_name", "updated_at"])
    return signing_secret


def function_delete(*, tenant: Tenant, function: TenantFunction) -> None:
    if function.tenant_id != tenant.pk:
        raise TenantFunction.DoesNotExist
    with transaction.atomic():
        if function.signing_secret_name:
            secret_service.tenant_secret_delete(tenant=tenant, name=function.signing_secret_name)
        function.delete()
