"""Inbox reads: the list (one statement), one conversation's timeline and its contact panel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection

from channels_app.models import Channel, InboundEvent
from conversations import intelligence, queries
from conversations.inbox.services import display_name, message_frame, note_frame, user_frame, window_frame
from conversations.models import (
    Conversation,
    ConversationNote,
    Message,
    SatisfactionRating,
)
from tenants.models import Tenant

PAGE_SIZE = 50
UNREAD_CAP = 99  # "99+" is all a badge says
FILTERS = ("all", "mine", "unassigned")
SENTIMENTS = intelligence.SENTIMENTS
TAG_MAX_CHARS = 64  # Conversation.tags' items
TIMELINE_LIMIT = 300
PREVIEW_SENDERS = ("user", "assistant", "agent", "system")


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    (cid, state, last_activity, waiting_since, created_at, reason, channel_id, channel_type, channel_name,
     assignee_id, username, first_name, last_name, contact_id, profile_name, external_id,
     preview, preview_sender, preview_kind, sentiment, tags, analysed_at, unread) = row  # fmt: skip
    assignee = None
    if assignee_id is not None:
        assignee = {"id": assignee_id, "name": f"{first_name} {last_name}".strip() or username}
    return {
        "id": str(cid),
        "state": state,
        "last_activity_at": _iso(last_activity),
        "waiting_since": _iso(waiting_since),
        "created_at": _iso(created_at),
        "handoff_reason": reason,
        "channel": {"id": str(channel_id), "type": channel_type, "name": channel_name},
        "assignee": assignee,
        "contact": {
            "id": str(contact_id),
            "name": contact_label(channel_type, profile_name, external_id),
            "external_id": external_id,
        },
        "preview": (preview or "")[:160],
        "preview_sender": preview_sender or "",
        "preview_kind": preview_kind or "",
        "unread": min(int(unread), UNREAD_CAP + 1),
        # Conversation intelligence (conversations.intelligence): empty until first analysed.
        "sentiment": sentiment or "",
        "tags": list(tags or []),
        "analysed_at": _iso(analysed_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def contact_label(channel_type: str, profile_name: str, external_id: str) -> str:
    """What agents call a contact: their name; a web chat visitor without one, "Visitor" and a short
    tag of their id (not the opaque id); else the phone number or page-scoped id."""
    if profile_name:
        return profile_name
    if channel_type == Channel.Type.WEBCHAT:
        return f"Visitor {external_id.removeprefix('v_')[:6]}"
    return external_id


def conversation_rows(
    *,
    tenant: Tenant,
    user: Any,
    scope: str = "all",
    state: str = "",
    channel_id: str = "",
    sentiment: str = "",
    tag: str = "",
    conversation_id: str = "",
    limit: int = PAGE_SIZE,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The inbox list for ``user``: waiting for a human first (longest wait first), then with an agent,
    then the bot's, then resolved; each row with its preview, channel, assignee, sentiment and tags and the
    user's unread count. ``sentiment`` and ``tag`` keep the conversations last analysed so (a tag: exactly
    one of the tenant's category names)."""
    where: list[str] = []
    params: dict[str, Any] = {
        "tenant": tenant.pk,
        "user": getattr(user, "pk", None),
        "senders": list(PREVIEW_SENDERS),
        "limit": max(1, min(int(limit), 200)),
        "offset": max(0, int(offset)),
    }
    if scope == "mine":
        where.append("AND c.assignee_id = %(user)s")
    elif scope == "unassigned":
        where.append("AND c.assignee_id IS NULL")
    if state:
        where.append("AND c.state = %(state)s")
        params["state"] = state
    if channel_id:
        where.append("AND c.channel_id = %(channel)s")
        params["channel"] = channel_id
    if sentiment:
        where.append("AND c.sentiment = %(sentiment)s")
        params["sentiment"] = sentiment
    if tag:
        where.append("AND c.tags @> ARRAY[%(tag)s]::varchar[]")
        params["tag"] = tag
    if conversation_id:
        where.append("AND c.id = %(conversation)s")
        params["conversation"] = conversation_id
    with connection.cursor() as cursor:
        cursor.execute(queries.inbox_list_sql(UNREAD_CAP).replace("{where}", " ".join(where)), params)
        return [_row(row) for row in cursor.fetchall()]


def timeline(*, tenant: Tenant, conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation's messages (tool calls left out) and its private notes, in order."""
    messages = list(
        Message.objects.for_tenant(tenant)
        .filter(conversation=conversation)
        .exclude(sender=Message.Sender.TOOL)
        .select_related("agent_user")
        .order_by("-id")[:TIMELINE_LIMIT]
    )
    notes = ConversationNote.objects.for_tenant(tenant).filter(conversation=conversation).select_related("author")
    items: list[tuple[Any, dict[str, Any]]] = [
        (m.created_at, {"type": "message", **message_frame(m, agent=m.agent_user)}) for m in reversed(messages)
    ]
    items += [(n.created_at, {"type": "note", **note_frame(n)}) for n in notes]
    items.sort(key=lambda pair: pair[0])
    return [item for _, item in items]


def contact_panel(*, tenant: Tenant, conversation: Conversation) -> dict[str, Any]:
    """Who the agent talks to: name, phone or page-scoped id, channel, previous conversations, and for a
    web chat visitor the page they were on (as the widget reported it)."""
    contact = conversation.contact
    channel = conversation.channel
    previous = list(
        Conversation.objects.for_tenant(tenant)
        .filter(contact=contact)
        .exclude(pk=conversation.pk)
        .order_by("-last_activity_at")
        .values("id", "state", "created_at", "last_activity_at")[:20]
    )
    page_url = ""
    if channel.type == Channel.Type.WEBCHAT:
        raw = (
            InboundEvent.objects.for_tenant(tenant)
            .filter(channel=channel, sender_external_id=contact.external_id, kind=InboundEvent.Kind.MESSAGE)
            .order_by("-id")
            .values_list("normalized", flat=True)
            .first()
        )
        page_url = str(((raw or {}).get("raw") or {}).get("page_url") or "")
    identifier_label = {"whatsapp": "Phone", "messenger": "Page-scoped id", "webchat": "Visitor id"}.get(
        channel.type, "Id"
    )
    ratings = list(
        SatisfactionRating.objects.for_tenant(tenant)
        .filter(conversation__contact=contact)
        .order_by("-id")
        .values("score", "created_at")[:5]
    )
    return {
        "name": contact_label(channel.type, contact.profile_name, contact.external_id),
        "profile_name": contact.profile_name,
        "identifier_label": identifier_label,
        "identifier": ("+" + contact.external_id)
        if channel.type == Channel.Type.WHATSAPP and contact.external_id.isdigit()
        else contact.external_id,
        "channel": {"id": str(channel.pk), "type": channel.type, "name": channel.name},
        "language": getattr(conversation, "language", "") or contact.language,
        "page_url": page_url if page_url.startswith(("https://", "http://")) else "",
        "first_seen": _iso(contact.created_at),
        "last_seen": _iso(contact.last_seen_at),
        "previous": [
            {
                "id": str(p["id"]),
                "state": p["state"],
                "created_at": _iso(p["created_at"]),
                "last_activity_at": _iso(p["last_activity_at"]),
            }
            for p in previous
        ],
        "ratings": [{"score": r["score"], "created_at": _iso(r["created_at"])} for r in ratings],
    }


def conversation_detail(*, tenant: Tenant, conversation: Conversation, user: Any) -> dict[str, Any]:
    rows = conversation_rows(tenant=tenant, user=user, conversation_id=str(conversation.pk), limit=1)
    return {
        "conversation": rows[0] if rows else None,
        "timeline": timeline(tenant=tenant, conversation=conversation),
        "contact": contact_panel(tenant=tenant, conversation=conversation),
        # The contact's customer-service window (WhatsApp, Messenger): what the composer may send now.
        "window": window_frame(conversation),
        "assignee": user_frame(conversation.assignee) if conversation.assignee_id else None,
        "me": {"id": user.pk, "name": display_name(user)},
    }
