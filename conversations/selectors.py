"""Reads: conversation lists (waiting-for-a-human first), transcripts, usage and cost per tenant."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db.models import Case, Count, IntegerField, QuerySet, Sum, Value, When

from conversations.models import Conversation, Message
from tenants.models import Tenant

# The inbox order: who waits for a human first, then those with an agent, then the rest.
STATE_PRIORITY = Case(
    When(state=Conversation.State.HANDOFF_REQUESTED, then=Value(0)),
    When(state=Conversation.State.AGENT, then=Value(1)),
    When(state=Conversation.State.BOT, then=Value(2)),
    default=Value(3),
    output_field=IntegerField(),
)


def conversation_list(
    *,
    tenant: Tenant,
    state: str | None = None,
    channel_id: UUID | str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sentiment: str | None = None,
    tag: str | None = None,
    waiting_first: bool = True,
) -> QuerySet[Conversation]:
    queryset = Conversation.objects.for_tenant(tenant).select_related("contact", "channel")
    if state:
        queryset = queryset.filter(state=state)
    if channel_id:
        queryset = queryset.filter(channel_id=channel_id)
    if since:
        queryset = queryset.filter(last_activity_at__gte=since)
    if until:
        queryset = queryset.filter(last_activity_at__lt=until)
    if sentiment:
        queryset = queryset.filter(sentiment=sentiment)
    if tag:
        queryset = queryset.filter(tags__contains=[tag])
    if waiting_first:
        return queryset.annotate(state_priority=STATE_PRIORITY).order_by("state_priority", "-last_activity_at")
    return queryset.order_by("-last_activity_at")


def conversation_get(*, tenant: Tenant, conversation_id: UUID | str) -> Conversation:
    return Conversation.objects.for_tenant(tenant).select_related("contact", "channel").get(pk=conversation_id)


def transcript(*, tenant: Tenant, conversation: Conversation) -> QuerySet[Message]:
    """Every message of the conversation in order: user, assistant (with sources), tool calls, agents."""
    return Message.objects.for_tenant(tenant).filter(conversation=conversation).order_by("id")


def tenant_usage(*, tenant: Tenant, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Tokens and estimated cost of the tenant's messages (per message, so a period can be asked)."""
    queryset = Message.objects.for_tenant(tenant)
    if since:
        queryset = queryset.filter(created_at__gte=since)
    if until:
        queryset = queryset.filter(created_at__lt=until)
    totals = queryset.aggregate(
        prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"), cost_usd=Sum("cost_usd")
    )
    conversations = Conversation.objects.for_tenant(tenant).aggregate(n=Count("id"))["n"]
    return {
        "prompt_tokens": totals["prompt_tokens"] or 0,
        "completion_tokens": totals["completion_tokens"] or 0,
        "cost_usd": totals["cost_usd"] or Decimal("0"),
        "conversations": conversations,
    }
