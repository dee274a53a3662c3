"""The turn pipeline: stages over one ``Turn``, run strictly in order per contact.

    resolve → intake → handoff_check → typing → retrieval → completion (LLM + tool loop) → reply
    → function_sends (the files and options the tenant's functions gave) → finish

``process_inbound`` is what the Celery task calls for an InboundEvent. Turns of one contact (hence
of one conversation) never run at the same time, on any worker: a PostgreSQL session advisory lock
keyed on (channel, contact) is taken with *try*; a worker that does not get it leaves its event
pending, because the holder looks for pending events after releasing the lock, so nothing is
stranded. What the contact wrote meanwhile is answered by the same task only when that message's own
task has come and found the turn running (it has had its place in the queue: ``turn_busy_at``);
otherwise it is left to its task, queued behind other contacts' turns (a contact who keeps writing
does not keep a worker thread while other contacts wait: with fewer threads than writing contacts,
serving them inline made the others wait up to 4 s in bench.turn). A burst is answered in one turn once the
contact has been quiet for ``TURN_DEBOUNCE_SECONDS``: until then the task releases the lock and
schedules itself again for when the burst may be over (a worker thread and the contact's database
connection are not held while the contact types).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple
from uuid import UUID

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from channels_app.inbound import enqueue_message_later, needs_preparation
from channels_app.models import Channel, ChannelSecret, InboundEvent
from channels_app.secrets import pin_loaded_secret
from config.logs import correlation_id
from conversations import queries
from conversations.metrics import observe_stage
from conversations.models import Conversation
from conversations.pipeline import (
    completion,
    failure,
    finish,
    function_sends,
    handoff_check,
    intake,
    reply,
    resolve,
    retrieval,
    rows,
    typing,
)
from conversations.pipeline.turn import Turn
from tenants.models import Tenant

logger = logging.getLogger(__name__)

STAGES = (
    resolve.run,
    intake.run,
    handoff_check.run,
    typing.run,
    retrieval.run,
    completion.run,
    reply.run,
    function_sends.run,
    finish.run,
)
MAX_EVENTS_PER_TURN = 20
# A contact typing without pause is answered after at most this many debounce periods.
MAX_DEBOUNCE_PERIODS = 5


def _try_lock(channel_id: UUID, sender_external_id: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(queries.TRY_LOCK, [str(channel_id), sender_external_id])
        return bool(cursor.fetchone()[0])


def _unlock(channel_id: UUID, sender_external_id: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(queries.UNLOCK, [str(channel_id), sender_external_id])


@contextmanager
def contact_lock(channel_id: UUID, sender_external_id: str, *, acquired: bool | None = None) -> Iterator[bool]:
    """Session-level advisory lock (not tied to a transaction: a turn spans several). ``acquired``:
    the caller tried already (``_lock_event``)."""
    if acquired is None:
        acquired = _try_lock(channel_id, sender_external_id)
    try:
        yield acquired
    finally:
        if acquired:
            _unlock(channel_id, sender_external_id)


def _lock_event(inbound_event_id: int) -> tuple[UUID, UUID, str, bool] | None:
    """A pending message event's (tenant id, channel id, sender) and whether its contact's lock was
    taken, in one query; None when the event is not a pending message (already answered). When the
    lock is held (the contact's turn is running), the event is marked ``turn_busy_at`` in the same
    statement: the running turn answers it next (``_hand_off``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            queries.lock_event_sql(), [inbound_event_id, InboundEvent.Status.PENDING, InboundEvent.Kind.MESSAGE]
        )
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1], row[2], bool(row[3]))


def run_stages(turn: Turn) -> Turn:
    try:
        for stage in STAGES:
            turn.stage = stage.__module__.rsplit(".", 1)[-1]
            started = time.perf_counter()
            try:
                stage(turn)
            finally:  # a stage that crashed is timed too
                observe_stage(turn.stage, time.perf_counter() - started)
    finally:  # nothing the turn started outlives it (a turn without a reply, a crash)
        turn.typing_done()
    return turn


def _pending_rows(channel_id: UUID, tenant_id: UUID, sender: str, *, for_turn: bool) -> list[tuple[Any, ...]]:
    params: list[Any] = [
        tenant_id, channel_id, sender, InboundEvent.Kind.MESSAGE, InboundEvent.Status.PENDING, MAX_EVENTS_PER_TURN,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(queries.pending_sql(for_turn), [tenant_id, *params] if for_turn else params)
        return cursor.fetchall()


def _pending(channel_id: UUID, tenant_id: UUID, sender: str) -> list[InboundEvent]:
    """The contact's pending messages in arrival order, up to the first that the channels area is
    still preparing (attachment download, sender's name): its task hands it back here, so order is kept.

    With what the turn needs besides, in the same query (hand-written: the ORM's query building cost
    more CPU than the query): each event's ``channel`` with its ``tenant`` and its encrypted
    credentials (pinned: the typing indicator and the reply read them from there), and the tenant's
    active functions (``events[0].functions``)."""
    found = _pending_rows(channel_id, tenant_id, sender, for_turn=True)
    if not found:
        return []
    widths = [rows.width(m) for m in (InboundEvent, Channel, Tenant, ChannelSecret)]
    c0 = widths[0]
    t0 = c0 + widths[1]
    s0 = t0 + widths[2]
    f0 = s0 + widths[3]
    first = found[0]
    channel = rows.instance(Channel, first[c0:t0])
    Channel.tenant.field.set_cached_value(channel, rows.instance(Tenant, first[t0:s0]))
    secret = rows.instance(ChannelSecret, first[s0:f0]) if first[s0] is not None else None
    if secret is not None:
        ChannelSecret.channel.field.set_cached_value(secret, channel)
    Channel.secret.related.set_cached_value(channel, secret)
    pin_loaded_secret(channel)
    functions = completion.functions_from_rows(json.loads(first[f0]))
    ready: list[InboundEvent] = []
    for row in found:
        event = rows.instance(InboundEvent, row[:c0])
        if needs_preparation(event.normalized):
            break
        InboundEvent.channel.field.set_cached_value(event, channel)
        event.functions = functions  # type: ignore[attr-defined]
        ready.append(event)
    return ready


def _first_pending_marked(channel_id: UUID, tenant_id: UUID, sender: str) -> int | None:
    """The id of the message event ``_pending`` would start a turn with (the cheap question), when its
    own task has come and found the contact's turn running (``_lock_event`` marked it)."""
    for event_id, normalized, busy in _pending_rows(channel_id, tenant_id, sender, for_turn=False):
        ready = not needs_preparation(json.loads(normalized) if isinstance(normalized, str) else normalized)
        return int(event_id) if ready and busy else None
    return None


class Drained(NamedTuple):
    turns: int
    # The burst is still being written: its turn is asked for again in this many seconds, with this event.
    wait: float = 0.0
    event_id: int | None = None


def _drain(channel_id: UUID, tenant_id: UUID, sender: str) -> Drained:
    """Answer the contact's pending messages as one turn (at most MAX_EVENTS_PER_TURN, in arrival
    order). A burst the contact is still writing is not waited for: it is handed back (``_hand_off``)."""
    events = _pending(channel_id, tenant_id, sender)
    if not events:
        return Drained(0)
    debounce = settings.TURN_DEBOUNCE_SECONDS
    if debounce > 0:
        now = timezone.now()
        quiet_for = (now - max(e.received_at for e in events)).total_seconds()
        waited = (now - min(e.received_at for e in events)).total_seconds()
        if quiet_for < debounce and waited < debounce * MAX_DEBOUNCE_PERIODS:
            return Drained(0, min(debounce, debounce - quiet_for), events[-1].pk)
    channel = events[0].channel
    turn = Turn(tenant=channel.tenant, channel=channel, sender_external_id=sender, inbound_events=events)
    turn.functions = events[0].functions  # type: ignore[attr-defined]
    _run_guarded(turn)
    return Drained(1)


def _hand_off(drained: Drained, channel_id: UUID, tenant_id: UUID, sender: str) -> int | None:
    """After the lock is released: the id of a message the contact wrote meanwhile that the caller
    should answer itself, because its own task has had its place in the queue already: it came, found
    the turn running and gave up (``turn_busy_at``). Otherwise None: the burst still being written is
    asked for again when it may be over, and a message whose task has not come yet is left to that
    task, in its place in the queue behind other contacts' turns (answering it here would let a
    contact who keeps writing keep a worker thread while others wait). A lost publish leaves the event
    pending for the stale-pending sweep."""
    if drained.event_id is not None:
        enqueue_message_later(drained.event_id, drained.wait)
        return None
    return _first_pending_marked(channel_id, tenant_id, sender)


def _run_guarded(turn: Turn) -> None:
    # The turn's lines, events, Graph API call and webhooks carry the id of the message it answers
    # (the first of a burst), stored with it at the webhook, whichever task runs the turn.
    first = turn.inbound_events[0].correlation_id if turn.inbound_events else ""
    token = correlation_id.set(first or correlation_id.get())
    try:
        run_stages(turn)
        _log_turn(turn)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the task retries, the events are still pending
    except Exception as exc:
        # A bug or bad data: recorded, the user told, and the drain goes on (failure.py).
        failure.handle_crash(turn, exc)
    finally:
        correlation_id.reset(token)


def _log_turn(turn: Turn) -> None:
    logger.info(
        "turn finished",
        extra={
            "tenant_id": str(turn.tenant.pk),
            "channel_id": str(turn.channel.pk),
            "conversation_id": str(turn.conversation.pk) if turn.conversation else None,
            "outcome": finish._outcome(turn),
            "inbound_ids": [e.pk for e in turn.inbound_events],
            "inbound_correlation_ids": sorted({e.correlation_id for e in turn.inbound_events if e.correlation_id}),
            "timings_ms": turn.timings,
        },
    )


def process_inbound(*, inbound_event_id: int) -> int:
    """Entry point for an InboundEvent id; returns how many turns this call ran. Idempotent."""
    found = _lock_event(inbound_event_id)
    if found is None:
        return 0
    tenant_id, channel_id, sender, tried = found
    # The lock was held: the event is marked now (committed). A holder that read the contact's pending
    # messages before the mark committed has released the lock already, so one more try takes it; if
    # it is held still, its holder reads the mark when it hands off.
    taken: bool | None = tried or _try_lock(channel_id, sender)
    turns = 0
    while True:
        with contact_lock(channel_id, sender, acquired=taken) as acquired:
            if not acquired:
                return turns  # the holder looks again after releasing; our event is not stranded
            drained = _drain(channel_id, tenant_id, sender)
            turns += drained.turns
        if _hand_off(drained, channel_id, tenant_id, sender) is None:
            return turns
        taken = None  # not tried yet


def process_conversation(*, conversation: Conversation) -> int | None:
    """Answer the conversation's unanswered user messages (a retry after the LLM was down).

    None when another turn of this contact is running (the caller retries later)."""
    channel = pin_loaded_secret(Channel.objects.select_related("tenant", "secret").get(pk=conversation.channel_id))
    sender = conversation.contact.external_id
    with contact_lock(channel.pk, sender) as acquired:
        if not acquired:
            return None
        conversation = Conversation.objects.select_related("contact").get(pk=conversation.pk)
        turn = Turn(tenant=channel.tenant, channel=channel, sender_external_id=sender)
        turn.conversation = conversation
        turn.contact = conversation.contact
        _run_guarded(turn)
    waiting = _hand_off(Drained(1), channel.pk, channel.tenant_id, sender)
    return 1 + (process_inbound(inbound_event_id=waiting) if waiting is not None else 0)
