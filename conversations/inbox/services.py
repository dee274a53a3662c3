"""Inbox operations. Every function takes the tenant explicitly and refuses another tenant's rows
(``Conversation.DoesNotExist``, a 404 to the caller); every change is pushed to the tenant's agents
(``live``) after it commits.

What the end user is told comes from ``conversations.phrases`` in the conversation's language: one
"<agent> joined" when an agent takes the conversation, and on resolve the closing message with the
1-5 satisfaction question (buttons on web chat; a question to answer with a digit elsewhere).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Avg, Count
from django.utils import timezone

from channels_app import services as channel_services
from channels_app.adapters.base import (
    Choice,
    Choices,
    InvalidChoices,
    NoticeAdapter,
    SendError,
    TemplateAdapter,
    get_adapter,
)
from channels_app.models import Channel, MessageTemplate
from channels_app.services import templates, window
from channels_app.services.window import OutsideWindow
from conversations import outbound, phrases, services, state
from conversations.inbox import live
from conversations.models import (
    CannedReply,
    Conversation,
    ConversationNote,
    ConversationRead,
    Message,
    SatisfactionRating,
)
from tenants.models import Membership, Tenant

logger = logging.getLogger(__name__)
State = Conversation.State
NOTE_MAX_CHARS = 4000
# "4", "4/5", "4 stars", "⭐⭐⭐⭐": an answer to the satisfaction question.
_RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5|stars?|estrelas?|estrellas?|etoiles?|sterne?)?\s*[.!]?\s*$", re.I)
_STARS = re.compile(r"^\s*((?:\u2b50|\u2605){1,5})\s*$")


class InboxError(ValueError):
    """A refused inbox operation: ``code`` is stable, the message is for the agent."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# --- who ----------------------------------------------------------------------------------------------


def display_name(user: Any) -> str:
    if user is None:
        return ""
    return (user.get_full_name() or "").strip() or user.get_username()


def user_frame(user: Any) -> dict[str, Any] | None:
    return None if user is None else {"id": user.pk, "name": display_name(user)}


def tenant_agents(tenant: Tenant) -> list[Any]:
    """The tenant's agents (staff users with a membership), by name."""
    user_model = get_user_model()
    ids = Membership.objects.for_tenant(tenant).values_list("user_id", flat=True)
    return list(user_model.objects.filter(pk__in=ids, is_active=True).order_by("first_name", "username"))


def is_tenant_agent(tenant: Tenant, user: Any) -> bool:
    if user is None or not getattr(user, "is_active", False) or not getattr(user, "is_staff", False):
        return False
    return bool(user.is_superuser) or Membership.objects.for_tenant(tenant).filter(user_id=user.pk).exists()


def _check_owner(tenant: Tenant, conversation: Conversation) -> None:
    if conversation.tenant_id != tenant.pk:
        raise Conversation.DoesNotExist


def conversation_language(conversation: Conversation, tenant: Tenant) -> str:
    return (
        getattr(conversation, "language", "")
        or getattr(conversation.contact, "language", "")
        or (tenant.config.locale[0] if tenant.config.locale else "en")
    )


# --- telling the end user -----------------------------------------------------------------------------


def _supports_notices(channel: Channel) -> bool:
    try:
        return isinstance(get_adapter(channel.type), NoticeAdapter)
    except KeyError:
        return False


def _system_message(tenant: Tenant, conversation: Conversation, kind: str, text: str) -> Message:
    """A platform message (sender ``system``) of the conversation, stored ``queued`` before it is sent."""
    return Message.objects.create(
        tenant_id=tenant.pk,
        conversation=conversation,
        channel_id=conversation.channel_id,
        direction=Message.Direction.OUTBOUND,
        sender=Message.Sender.SYSTEM,
        kind=kind,
        content=text,
        status=Message.Status.QUEUED,
    )


def _tell(
    tenant: Tenant, conversation: Conversation, text: str, *, kind: str, notice: dict[str, Any] | None
) -> Message:
    """Store a platform message (sender ``system``) and send it: as a notice where the channel shows
    notices (web chat), else as text. A delivery failure is recorded on the message, never raised."""
    message = _system_message(tenant, conversation, kind, text)
    channel = conversation.channel
    recipient = conversation.contact.external_id
    error = ""
    try:
        if notice is not None and _supports_notices(channel):
            outbound.send_notice(channel=channel, recipient_id=recipient, kind=notice.pop("kind"), data=notice)
        else:
            result = outbound.send_text(
                channel=channel, recipient_id=recipient, text=text, message_id=message.pk, role="system"
            )
            message.platform_message_id = result.platform_message_ids[0] if result.platform_message_ids else ""
    except SendError as exc:
        error = str(exc)
    _settle_sent(tenant, conversation, message, error, preview=text)
    return message


def message_media(message: Message) -> list[Any]:
    """A message's attachments: what the end user sent (the normalized inbound message's media) or
    the file an agent sent (channels_app.services.outbound_media stores it as ``payload.media``)."""
    payload = message.payload if isinstance(message.payload, dict) else {}
    sent = payload.get("media")
    if isinstance(sent, dict):
        return [sent]
    return list((payload.get("normalized") or {}).get("media") or [])


def message_frame(message: Message, *, agent: Any = None) -> dict[str, Any]:
    payload = message.payload if isinstance(message.payload, dict) else {}
    media = [
        {"index": i, "kind": m.get("kind", "file"), "mime_type": m.get("mime_type", ""),
         "filename": m.get("filename", ""), "caption": m.get("caption", ""), "stored": bool(m.get("storage_path"))}
        for i, m in enumerate(message_media(message))
        if isinstance(m, dict)
    ]  # fmt: skip
    return {
        "id": message.pk,
        "direction": message.direction,
        "sender": message.sender,
        "kind": message.kind,
        "text": message.content,
        "sources": payload.get("sources") or [],
        "media": media,
        "status": message.status,
        "error": (message.error or {}).get("message", "") if isinstance(message.error, dict) else "",
        "agent": user_frame(agent),
        "created_at": message.created_at.isoformat() if message.created_at else None,
    }


# --- assignment ---------------------------------------------------------------------------------------


def assign(
    *,
    tenant: Tenant,
    conversation: Conversation,
    assignee: Any,
    by: Any,
    only_if_unassigned: bool = False,
    tell: bool = True,
) -> Conversation:
    """Give the conversation to ``assignee`` (an agent of the tenant; None: unassign). Taking it moves a
    waiting (or bot) conversation to ``agent`` — the bot stays silent — and tells the end user
    "<agent> joined" once per new assignee (not with ``tell=False``: a template sent outside the
    customer-service window, where no free-form notice can go). Every agent's page shows it live.
    ``only_if_unassigned``: do nothing when someone has it already (decided under the row lock: two
    agents answering an unassigned conversation at once do not both take it)."""
    _check_owner(tenant, conversation)
    if assignee is not None and not is_tenant_agent(tenant, assignee):
        raise InboxError("not_an_agent", "Conversations can be assigned only to an agent of this tenant.")
    actor = f"agent:{by.get_username()}" if by is not None else "agent"
    with transaction.atomic():
        locked = (
            Conversation.objects.select_for_update()
            .select_related("contact", "channel")
            .get(pk=conversation.pk, tenant_id=tenant.pk)
        )
        previous = locked.assignee_id
        if only_if_unassigned and previous is not None:
            conversation.assignee_id, conversation.state = previous, locked.state
            return conversation
        locked.assignee = assignee
        locked.save(update_fields=["assignee"])
        joined = assignee is not None and previous != assignee.pk and locked.state != State.RESOLVED
        if joined and locked.state in (State.BOT, State.HANDOFF_REQUESTED):
            state.transition(
                conversation=locked, to=State.AGENT, reason=f"assigned to {assignee.get_username()}", actor=actor
            )
        live.push_after_commit(
            tenant.pk,
            {
                "type": "assigned",
                "conversation_id": str(locked.pk),
                "assignee": user_frame(assignee),
                "by": user_frame(by),
                "state": locked.state,
            },
        )
    # Told after the commit: the channel's call (Meta's Graph API, up to its timeout) never holds the
    # conversation's row lock, which every other agent's action on it waits for.
    if joined and tell:
        text = phrases.phrase("agent_joined", conversation_language(locked, tenant), agent=display_name(assignee))
        _tell(tenant, locked, text, kind="agent_joined", notice={"kind": "handoff", "state": "agent", "message": text})
    conversation.assignee = assignee
    conversation.state = locked.state
    return conversation


def reply(*, tenant: Tenant, conversation: Conversation, text: str, user: Any) -> Message:
    """An agent's reply (conversations.services.agent_reply); an unassigned conversation is assigned to
    the agent who answers it first (so the end user learns who joined, and no one else replies unaware).
    Outside the customer-service window: OutsideWindow, before anything is assigned, stored or sent."""
    _check_owner(tenant, conversation)
    if not text.strip():
        raise InboxError("empty", "The reply is empty.")
    services.check_reply_window(conversation)
    if conversation.assignee_id is None and user is not None and is_tenant_agent(tenant, user):
        assign(tenant=tenant, conversation=conversation, assignee=user, by=user, only_if_unassigned=True)
    message = services.agent_reply(tenant=tenant, conversation=conversation, text=text, user=user)
    mark_read(tenant=tenant, conversation=conversation, user=user)
    return message


def window_frame(conversation: Conversation) -> dict[str, Any]:
    """The contact's customer-service window as the composer shows it (``applies`` False on web chat):
    open, when it closes, Messenger's human-agent limit, and whether templates can reach them."""
    channel = conversation.channel
    state_ = window.window_state(channel=channel, recipient_id=conversation.contact.external_id)
    try:
        offers_templates = isinstance(get_adapter(channel.type), TemplateAdapter)
    except KeyError:
        offers_templates = False
    return {**state_.as_dict(timezone.now()), "templates": state_.applies and offers_templates}


# --- templates ----------------------------------------------------------------------------------------

TEMPLATE_NAME_MAX = 512
TEMPLATE_LANGUAGE_MAX = 16


def template_frame(template: MessageTemplate) -> dict[str, Any]:
    """An approved template as the composer's picker shows it: what to fill and the parts to preview."""
    parts: dict[str, Any] = {"header": None, "body": "", "footer": "", "buttons": []}
    for component in template.components or []:
        if not isinstance(component, dict):
            continue
        kind = str(component.get("type", "")).upper()
        if kind == "HEADER":
            parts["header"] = {
                "format": str(component.get("format", "")).upper(),
                "text": str(component.get("text", "")),
            }
        elif kind == "BODY":
            parts["body"] = str(component.get("text", ""))
        elif kind == "FOOTER":
            parts["footer"] = str(component.get("text", ""))
        elif kind == "BUTTONS":
            parts["buttons"] = [str(b.get("text", "")) for b in component.get("buttons") or [] if isinstance(b, dict)]
    return {
        "name": template.name,
        "language": template.language,
        "category": template.category,
        "parameter_format": template.parameter_format,
        "variables": templates.template_variables(template),
        "preview": templates.template_preview(template),
        **parts,
    }


def approved_templates(*, tenant: Tenant, conversation: Conversation) -> list[dict[str, Any]]:
    """The APPROVED templates of the conversation's channel (as last synced), by name and language."""
    _check_owner(tenant, conversation)
    rows = (
        MessageTemplate.objects.for_tenant(tenant)
        .filter(channel_id=conversation.channel_id, status__iexact="APPROVED")
        .order_by("name", "language")
    )
    return [template_frame(t) for t in rows]


def send_template(
    *, tenant: Tenant, conversation: Conversation, name: str, language: str, variables: dict[str, Any], user: Any
) -> Message:
    """An agent sends an approved template (``templates.conversation_send_template``: checked first —
    unknown, not approved or wrong variables raise TemplateError with nothing stored —, then stored as
    the agent's message and sent; the conversation moves to ``agent``). Like a reply, an unassigned
    conversation goes to the agent; "<agent> joined" is told only inside the window."""
    _check_owner(tenant, conversation)
    template = templates.template_get(channel=conversation.channel, name=name, language=language)
    templates.check_sendable(template)
    templates.template_render(template, variables)
    if conversation.assignee_id is None and user is not None and is_tenant_agent(tenant, user):
        state_ = window.window_state(channel=conversation.channel, recipient_id=conversation.contact.external_id)
        assign(
            tenant=tenant,
            conversation=conversation,
            assignee=user,
            by=user,
            only_if_unassigned=True,
            tell=state_.is_open(timezone.now()),
        )
    message = templates.conversation_send_template(
        tenant=tenant, conversation=conversation, name=name, language=language, variables=variables, user=user
    )
    # An agent answered: agent_send stopped the inbox's waiting time (until the contact writes again).
    mark_read(tenant=tenant, conversation=conversation, user=user)
    return message


# --- read marks ---------------------------------------------------------------------------------------


def mark_read(*, tenant: Tenant, conversation: Conversation, user: Any, up_to: int | None = None) -> int:
    """The agent has read the conversation up to message ``up_to`` (default: its latest). Never goes back."""
    _check_owner(tenant, conversation)
    if user is None or not getattr(user, "pk", None):
        return 0
    if up_to is None:
        up_to = (
            Message.objects.for_tenant(tenant)
            .filter(conversation=conversation)
            .order_by("-id")
            .values_list("id", flat=True)
            .first()
            or 0
        )
    read, created = ConversationRead.objects.get_or_create(
        tenant_id=tenant.pk, conversation=conversation, user=user, defaults={"last_read_message_id": up_to}
    )
    if not created and read.last_read_message_id < up_to:
        ConversationRead.objects.filter(pk=read.pk, last_read_message_id__lt=up_to).update(
            last_read_message_id=up_to, updated_at=timezone.now()
        )
    return up_to


# --- notes --------------------------------------------------------------------------------------------


def add_note(*, tenant: Tenant, conversation: Conversation, text: str, user: Any) -> ConversationNote:
    """A private note: stored and shown to the tenant's agents, never sent to the end user."""
    _check_owner(tenant, conversation)
    text = text.strip()
    if not text:
        raise InboxError("empty", "The note is empty.")
    if len(text) > NOTE_MAX_CHARS:
        raise InboxError("too_long", f"A note has at most {NOTE_MAX_CHARS} characters.")
    with transaction.atomic():
        note = ConversationNote.objects.create(tenant_id=tenant.pk, conversation=conversation, author=user, text=text)
        live.push_after_commit(
            tenant.pk, {"type": "note", "conversation_id": str(conversation.pk), "note": note_frame(note)}
        )
    return note


def note_frame(note: ConversationNote) -> dict[str, Any]:
    return {
        "id": note.pk,
        "text": note.text,
        "author": user_frame(note.author),
        "created_at": note.created_at.isoformat() if note.created_at else None,
    }


# --- canned replies -----------------------------------------------------------------------------------


def canned_replies(*, tenant: Tenant) -> list[dict[str, str]]:
    return [
        {"shortcut": c.shortcut, "text": c.text} for c in CannedReply.objects.for_tenant(tenant).order_by("shortcut")
    ]


def canned_reply_save(*, tenant: Tenant, shortcut: str, text: str) -> CannedReply:
    shortcut = shortcut.strip().lstrip("/").lower()
    if not re.fullmatch(r"[a-z0-9_-]{1,40}", shortcut):
        raise InboxError("invalid_shortcut", "A shortcut is 1-40 letters, digits, '-' or '_'.")
    if not text.strip():
        raise InboxError("empty", "The canned reply is empty.")
    canned, _ = CannedReply.objects.update_or_create(
        tenant_id=tenant.pk, shortcut=shortcut, defaults={"text": text.strip()}
    )
    return canned


# --- resolve, return to bot, satisfaction -------------------------------------------------------------


def resolve(*, tenant: Tenant, conversation: Conversation, user: Any) -> Conversation:
    """Resolve, then tell the end user: the closing message and the 1-5 satisfaction question (web chat:
    buttons; elsewhere: answer with a digit, which the turn pipeline stores as the rating)."""
    _check_owner(tenant, conversation)
    actor = f"agent:{user.get_username()}" if user is not None else "agent"
    with transaction.atomic():
        # The state as it is now, under the row lock: two agents (or a double click) resolving at once
        # send the closing message and the question once.
        previous = (
            Conversation.objects.select_for_update()
            .filter(pk=conversation.pk, tenant_id=tenant.pk)
            .values_list("state", flat=True)
            .first()
        )
        if previous is None or previous == State.RESOLVED:
            conversation.state = State.RESOLVED if previous else conversation.state
            return conversation
        services.conversation_resolve(tenant=tenant, conversation=conversation, actor=actor)
        now = timezone.now()
        Conversation.objects.filter(pk=conversation.pk, tenant_id=tenant.pk).update(
            waiting_since=None, satisfaction_requested_at=now
        )
        conversation.waiting_since, conversation.satisfaction_requested_at = None, now
    # Told after the commit (as in ``assign``): the channel's calls never hold the row lock.
    language = conversation_language(conversation, tenant)
    closing = phrases.phrase("closing", language)
    question = phrases.phrase("satisfaction_question", language)
    if _supports_notices(conversation.channel):
        _tell(tenant, conversation, closing, kind="closing", notice=None)
        _tell(
            tenant,
            conversation,
            question,
            kind="csat_question",
            notice={"kind": "csat", "question": question, "scale": [1, 2, 3, 4, 5],
                    "conversation_id": str(conversation.pk)},
        )  # fmt: skip
    else:
        _tell(tenant, conversation, closing, kind="closing", notice=None)
        _ask_rating(tenant, conversation, question)
    return conversation


RATING_PAYLOAD = "csat:"


def _ask_rating(tenant: Tenant, conversation: Conversation, question: str) -> Message:
    """The satisfaction question with options to tap where the channel has them (WhatsApp: a list of
    five rows, more than its three reply buttons; Messenger: quick replies), each option's id
    ``csat:<n>``; as text otherwise, or when the options are refused (outside WhatsApp's window)."""
    message = _system_message(tenant, conversation, "csat_question", question)
    channel, recipient = conversation.channel, conversation.contact.external_id
    choices = Choices(
        body=question,
        options=[Choice(id=f"{RATING_PAYLOAD}{n}", title=str(n)) for n in range(1, 6)],
        button_label="1 - 5",
    )
    error = ""
    try:
        try:
            result = channel_services.send_choices(channel=channel, recipient_id=recipient, choices=choices)
        except (InvalidChoices, OutsideWindow) as exc:  # refused before sending: the question as text
            logger.info("rating options not sent, asking in text", extra={"error": str(exc)})
            result = outbound.send_text(channel=channel, recipient_id=recipient, text=question, message_id=message.pk)
        message.platform_message_id = result.platform_message_ids[0] if result.platform_message_ids else ""
    except SendError as exc:
        error = str(exc)
    _settle_sent(tenant, conversation, message, error, preview=question)
    return message


def _settle_sent(tenant: Tenant, conversation: Conversation, message: Message, error: str, *, preview: str) -> None:
    """A system message the platform sent: sent or failed with the reason, and shown to the agents live."""
    message.status = Message.Status.FAILED if error else Message.Status.SENT
    message.error = {"stage": "send", "message": error} if error else {}
    message.save(update_fields=["status", "error", "platform_message_id", "updated_at"])
    live.push_after_commit(
        tenant.pk,
        {"type": "message", "conversation_id": str(conversation.pk), "message": message_frame(message),
         "preview": preview[: live.PREVIEW_CHARS]},
    )  # fmt: skip


def return_to_bot(*, tenant: Tenant, conversation: Conversation, user: Any) -> Conversation:
    _check_owner(tenant, conversation)
    actor = f"agent:{user.get_username()}" if user is not None else "agent"
    with transaction.atomic():
        services.conversation_return_to_bot(tenant=tenant, conversation=conversation, actor=actor)
        Conversation.objects.filter(pk=conversation.pk, tenant_id=tenant.pk).update(waiting_since=None)
    return conversation


def rating_from_tap(payload: str) -> int | None:
    """The score of a tapped rating option (``csat:<n>``), else None."""
    if payload.startswith(RATING_PAYLOAD) and payload[len(RATING_PAYLOAD) :] in {"1", "2", "3", "4", "5"}:
        return int(payload[len(RATING_PAYLOAD) :])
    return None


def rating_answer(taps: list[str], text: str) -> int | None:
    """The score a burst gives the satisfaction question: a tapped option, else the whole text ("4")."""
    return next((n for n in map(rating_from_tap, taps) if n), None) or rating_from_text(text.strip())


def rating_from_text(text: str) -> int | None:
    """The score in an answer to the satisfaction question ("4", "4/5", "⭐⭐⭐⭐"), else None."""
    if match := _RATING.match(text or ""):
        return int(match.group(1))
    if match := _STARS.match(text or ""):
        return len(match.group(1))
    return None


def rate(*, tenant: Tenant, conversation: Conversation, score: int) -> SatisfactionRating | None:
    """Store the end user's answer to the satisfaction question (once per question: None when none is
    pending). Thanks the user and updates the agents' pages."""
    _check_owner(tenant, conversation)
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise InboxError("invalid_score", "A satisfaction rating is a whole number from 1 to 5.")
    with transaction.atomic():
        taken = Conversation.objects.filter(
            pk=conversation.pk, tenant_id=tenant.pk, satisfaction_requested_at__isnull=False
        ).update(satisfaction_requested_at=None)
        if not taken:
            return None
        fresh = Conversation.objects.select_related("contact", "channel").get(pk=conversation.pk)
        rating = SatisfactionRating.objects.create(
            tenant_id=tenant.pk, conversation=fresh, score=score, agent_id=fresh.assignee_id
        )
        thanks = phrases.phrase("satisfaction_thanks", conversation_language(fresh, tenant))
        _tell(tenant, fresh, thanks, kind="csat_thanks", notice=None)
        live.push_after_commit(
            tenant.pk, {"type": "rating", "conversation_id": str(fresh.pk), "score": score, "rating_id": rating.pk}
        )
    return rating


def rate_contact(*, channel: Channel, contact_external_id: str, score: int) -> SatisfactionRating | None:
    """A web chat visitor's button: the rating of their latest conversation that asked for one."""
    conversation = (
        Conversation.objects.for_tenant(channel.tenant_id)
        .select_related("contact", "channel")
        .filter(channel=channel, contact__external_id=contact_external_id, satisfaction_requested_at__isnull=False)
        .order_by("-last_activity_at")
        .first()
    )
    if conversation is None:
        return None
    tenant = Tenant.objects.get(pk=channel.tenant_id)
    return rate(tenant=tenant, conversation=conversation, score=score)


def satisfaction_summary(*, tenant: Tenant) -> dict[str, Any]:
    """How many ratings, their average and their distribution (1-5)."""
    ratings = SatisfactionRating.objects.for_tenant(tenant)
    totals = ratings.aggregate(count=Count("id"), average=Avg("score"))
    by_score = dict(ratings.values_list("score").annotate(n=Count("id")).values_list("score", "n"))
    return {
        "count": totals["count"] or 0,
        "average": round(float(totals["average"]), 2) if totals["average"] is not None else None,
        "by_score": {str(s): by_score.get(s, 0) for s in range(1, 6)},
    }


# --- typing -------------------------------------------------------------------------------------------


def agent_typing(*, tenant: Tenant, conversation: Conversation, user: Any, on: bool) -> None:
    """An agent types in the composer: the other agents see "X is replying"; the end user sees our
    typing indicator on their channel (best effort; none once the customer-service window has closed)."""
    _check_owner(tenant, conversation)
    live.push(
        tenant.pk,
        {"type": "agent_typing", "conversation_id": str(conversation.pk), "agent": user_frame(user), "on": on},
    )
    channel = conversation.channel
    recipient = conversation.contact.external_id
    if _supports_notices(channel):
        outbound.send_notice(channel=channel, recipient_id=recipient, kind="typing", data={"on": on})
    elif on and window.window_state(channel=channel, recipient_id=recipient).is_open(timezone.now()):
        # Outside the customer-service window Meta refuses the indicator (and nothing else may go).
        last_in = (
            Message.objects.for_tenant(tenant)
            .filter(conversation=conversation, direction=Message.Direction.INBOUND)
            .exclude(platform_message_id="")
            .order_by("-id")
            .values_list("platform_message_id", flat=True)
            .first()
        )
        outbound.send_typing(channel=channel, recipient_id=recipient, reply_to_message_id=last_in or "")
