"""Stage 3: does a human own this conversation, or does the user ask for one?

While a human owns it (``handoff_requested`` or ``agent``) the bot stays silent. A request for a
person (conversations.handoff.requested_handoff: a handoff keyword, case- and accent-insensitive whole
word, in a message that asks for a person rather than one that merely contains the word) escalates:
the user is told once (the reply is the notice), staff get ``human_handoff.requested``, and no LLM
is called.
"""

from __future__ import annotations

from django.utils import timezone

from conversations import handoff, state
from conversations.inbox import services as inbox
from conversations.models import Conversation
from conversations.pipeline.turn import Turn


def run(turn: Turn) -> None:
    if turn.ignore_reason or turn.silent_reason:
        return
    conversation = turn.conversation
    assert conversation is not None
    if conversation.satisfaction_requested_at is not None and _satisfaction_answer(turn):
        return
    if conversation.state != Conversation.State.BOT:
        turn.silent_reason = f"a human owns the conversation (state {conversation.state})"
        _waits(turn)
        return
    config = turn.config
    if not config.enable_human_handoff:
        return
    keyword = handoff.requested_handoff(turn.query, config.human_handoff_keywords)
    if keyword:
        escalate(turn, reason=f"keyword: {keyword}")


def escalate(turn: Turn, *, reason: str) -> None:
    """Move to ``handoff_requested`` and make the reply the handoff notice.

    A human may have taken the conversation (or staff resolved it) while this turn ran: then the bot
    stays silent, as it would had the turn started a moment later, instead of failing the turn."""
    assert turn.conversation is not None
    try:
        state.transition(conversation=turn.conversation, to=Conversation.State.HANDOFF_REQUESTED, reason=reason)
    except state.InvalidTransition as exc:
        turn.silent_reason = f"no handoff: {exc}"
        turn.reply_text = ""
        turn.reply_stream = None
        return
    turn.handoff_reason = reason
    turn.reply_text = handoff.notice_text(turn.language)
    turn.reply_stream = None


def _satisfaction_answer(turn: Turn) -> bool:
    """The user answers the closing message's satisfaction question (taps an option, or writes "4",
    "⭐⭐⭐⭐"): the rating is stored, the user thanked, and the conversation stays resolved (intake did
    not reopen it for such an answer). Anything else: the question lapses and the turn goes on."""
    conversation = turn.conversation
    assert conversation is not None
    taps = [((e.normalized or {}).get("reply") or {}).get("payload") or "" for e in turn.inbound_events]
    score = inbox.rating_answer(taps, turn.query)
    if score is None:
        Conversation.objects.filter(pk=conversation.pk, tenant_id=turn.tenant.pk).update(satisfaction_requested_at=None)
        conversation.satisfaction_requested_at = None
        return False
    inbox.rate(tenant=turn.tenant, conversation=conversation, score=score)
    if conversation.state != Conversation.State.RESOLVED:
        state.transition(conversation=conversation, to=Conversation.State.RESOLVED, reason="satisfaction rated")
    turn.silent_reason = f"satisfaction rating {score}"
    return True


def _waits(turn: Turn) -> None:
    """The user wrote while a human owns the conversation: the inbox's waiting time starts (if it was not
    running already), until an agent replies."""
    conversation = turn.conversation
    assert conversation is not None
    if conversation.waiting_since is None and turn.user_messages:
        conversation.waiting_since = timezone.now()
        Conversation.objects.filter(pk=conversation.pk, tenant_id=turn.tenant.pk, waiting_since__isnull=True).update(
            waiting_since=conversation.waiting_since
        )
