"""The turn pipeline: stages over one ``Turn``, run strictly in order per contact.

    resolve → intake → handoff_check → typing → retrieval → completion (LLM + tool loop) → reply → finish

``process_inbound`` is what the Celery task calls for an InboundEvent. Turns of one contact (hence
of one conversation) never run at the same time, on any worker: a PostgreSQL session advisory lock
keyed on (channel, contact) is taken with *try*; a worker that does not get it leaves its event
pending, because the holder re-reads the pending events after every turn and once more after
releasing the lock, so nothing is stranded. The holder waits until the contact has been quiet for
``TURN_DEBOUNCE_SECONDS`` and answers the whole burst in one turn.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from channels_app.inbound import needs_preparation
from channels_app.models import Channel, InboundEvent
from conversations.models import Conversation
from conversations.pipeline import (
    completion,
    failure,
    finish,
    handoff_check,
    intake,
    reply,
    resolve,
    retrieval,
    typing,
)
from conversations.pipeline.turn import Turn

STAGES = (
    resolve.run,
    intake.run,
    handoff_check.run,
    typing.run,
    retrieval.run,
    completion.run,
    reply.run,
    finish.run,
)
MAX_EVENTS_PER_TURN = 20
# A contact typing without pause is answered after at most this many debounce periods.
MAX_DEBOUNCE_PERIODS = 5


def lock_key(channel_id: Any, sender_external_id: str) -> int:
    digest = hashlib.blake2b(f"turn|{channel_id}|{sender_external_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def contact_lock(channel_id: Any, sender_external_id: str) -> Iterator[bool]:
    """Session-level advisory lock (not tied to a transaction: a turn spans several)."""
    key = lock_key(channel_id, sender_external_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def run_stages(turn: Turn) -> Turn:
    for stage in STAGES:
        turn.stage = stage.__module__.rsplit(".", 1)[-1]
        stage(turn)
    return turn


def _pending(channel_id: Any, tenant_id: Any, sender: str) -> list[InboundEvent]:
    """The contact's pending messages in arrival order, up to the first that the channels area is
    still preparing (attachment download, sender's name): its task hands it back here, so order is kept."""
    events = InboundEvent.objects.filter(
        tenant_id=tenant_id,
        channel_id=channel_id,
        sender_external_id=sender,
        kind=InboundEvent.Kind.MESSAGE,
        status=InboundEvent.Status.PENDING,
    ).order_by("id")[:MAX_EVENTS_PER_TURN]
    ready: list[InboundEvent] = []
    for event in events:
        if needs_preparation(event.normalized):
            break
        ready.append(event)
    return ready


def _drain(channel: Channel, sender: str) -> int:
    """Answer the contact's pending messages, burst by burst, in arrival order, while they keep coming."""
    turns = 0
    debounce = settings.TURN_DEBOUNCE_SECONDS
    events = _pending(channel.pk, channel.tenant_id, sender)
    while events:
        if debounce > 0:
            now = timezone.now()
            quiet_for = (now - max(e.received_at for e in events)).total_seconds()
            waited = (now - min(e.received_at for e in events)).total_seconds()
            if quiet_for < debounce and waited < debounce * MAX_DEBOUNCE_PERIODS:
                time.sleep(min(debounce, debounce - quiet_for))
                events = _pending(channel.pk, channel.tenant_id, sender)
                continue
        _run_guarded(Turn(tenant=channel.tenant, channel=channel, sender_external_id=sender, inbound_events=events))
        turns += 1
        if len(events) < MAX_EVENTS_PER_TURN and debounce <= 0:
            # Whatever arrived meanwhile is found by the caller's re-check after releasing the lock
            # (one query less per turn in the common case of nothing new).
            return turns
        events = _pending(channel.pk, channel.tenant_id, sender)
    return turns


def _run_guarded(turn: Turn) -> None:
    try:
        run_stages(turn)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the task retries, the events are still pending
    except Exception as exc:
        # A bug or bad data: recorded, the user told, and the drain goes on (failure.py).
        failure.handle_crash(turn, exc)


def process_inbound(*, inbound_event_id: int) -> int:
    """Entry point for an InboundEvent id; returns how many turns this call ran. Idempotent."""
    event = InboundEvent.objects.select_related("channel__tenant").filter(pk=inbound_event_id).first()
    if event is None or event.status != InboundEvent.Status.PENDING or event.kind != InboundEvent.Kind.MESSAGE:
        return 0
    channel = event.channel
    sender = event.sender_external_id
    turns = 0
    while True:
        with contact_lock(channel.pk, sender) as acquired:
            if not acquired:
                return turns  # the holder re-checks after releasing; our event is not stranded
            turns += _drain(channel, sender)
        # Re-check after releasing: an event committed while we held the lock, whose task gave up
        # on the lock, is ours to answer.
        if not _pending(channel.pk, channel.tenant_id, sender):
            return turns


def process_conversation(*, conversation: Conversation) -> int | None:
    """Answer the conversation's unanswered user messages (a retry after the LLM was down).

    None when another turn of this contact is running (the caller retries later)."""
    channel = Channel.objects.select_related("tenant").get(pk=conversation.channel_id)
    sender = conversation.contact.external_id
    with contact_lock(channel.pk, sender) as acquired:
        if not acquired:
            return None
        conversation = Conversation.objects.select_related("contact").get(pk=conversation.pk)
        turn = Turn(tenant=channel.tenant, channel=channel, sender_external_id=sender)
        turn.conversation = conversation
        turn.contact = conversation.contact
        _run_guarded(turn)
        turns = 1 + _drain(channel, sender)
    return turns
