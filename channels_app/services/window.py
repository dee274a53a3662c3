"""The customer-service window, known before sending.

WhatsApp accepts free-form messages for 24 hours after the contact's last message (each message
restarts it; ours do not); after that only approved templates, and a free-form send fails with
131047. Messenger: 24 hours, then a human agent may still answer for 7 days with the ``HUMAN_AGENT``
tag. The window is read from what the channel received (``InboundEvent``: the contact's latest
messages, by the ``inbound_sender`` index), so it needs no bookkeeping of its own on the intake path,
and a send outside it is refused here, before any Graph call, with ``OutsideWindow``
(``outside_customer_service_window``): the API answers 409, the bot does not try, the inbox offers a
template (``channels_app.services.templates``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from channels_app.adapters.base import SendError, ServiceWindow, WindowedAdapter, finite_float, get_adapter
from channels_app.models import Channel, InboundEvent

OUTSIDE_WINDOW = "outside_customer_service_window"
# Meta may redeliver an old message after a newer one: the newest few rows are compared.
_LATEST_ROWS = 5


class OutsideWindow(SendError):
    """A free-form message would land outside the contact's customer-service window (never retried)."""

    def __init__(self, message: str, *, last_inbound_at: datetime | None, closed_at: datetime | None):
        super().__init__(
            message,
            code=OUTSIDE_WINDOW,
            permanent=True,
            details={
                "reason": "outside_window",
                "last_inbound_at": last_inbound_at.isoformat() if last_inbound_at else None,
                "window_closed_at": closed_at.isoformat() if closed_at else None,
                "remedy": "send an approved template",
            },
        )


@dataclass(frozen=True)
class WindowState:
    """A contact's window on a channel. ``applies`` is False for channels without one (web chat)."""

    applies: bool
    last_inbound_at: datetime | None = None
    closes_at: datetime | None = None
    human_agent_tag: str = ""
    human_agent_closes_at: datetime | None = None

    def is_open(self, now: datetime) -> bool:
        return not self.applies or (self.closes_at is not None and now < self.closes_at)

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "applies": self.applies,
            "open": self.is_open(now),
            "last_inbound_at": _iso(self.last_inbound_at),
            "closes_at": _iso(self.closes_at),
            "human_agent_tag": self.human_agent_tag,
            "human_agent_closes_at": _iso(self.human_agent_closes_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def contact_identities(recipient_id: str) -> list[str]:
    """The sender ids one contact's messages may carry (phone number and/or BSUID: see bsuid)."""
    return [recipient_id] if recipient_id else []


def last_inbound_at(*, channel: Channel, recipient_id: str) -> datetime | None:
    """When the contact last wrote on this channel: the message's own time (Meta's clock), never later
    than when we received it (a future timestamp in a payload cannot hold a window open)."""
    ids = contact_identities(recipient_id)
    if not ids:
        return None
    rows = (
        InboundEvent.objects.for_tenant(channel.tenant_id)
        .filter(channel=channel, kind=InboundEvent.Kind.MESSAGE, sender_external_id__in=ids)
        .order_by("-id")
        .values_list("received_at", "normalized__timestamp")[:_LATEST_ROWS]
    )
    latest: datetime | None = None
    for received_at, stamp in rows:
        at = message_time(received_at, stamp)
        latest = at if latest is None or at > latest else latest
    return latest


def message_time(received_at: datetime, stamp: Any) -> datetime:
    """When a contact's message was written: its own time (Meta's clock), never later than when we
    received it."""
    seconds = finite_float(stamp)
    return min(received_at, datetime.fromtimestamp(seconds, tz=UTC)) if seconds > 0 else received_at


def last_inbound_message_id(*, channel: Channel, recipient_id: str) -> str:
    """The platform id of the contact's latest message (what WhatsApp's read/typing call names)."""
    found = (
        InboundEvent.objects.for_tenant(channel.tenant_id)
        .filter(
            channel=channel, kind=InboundEvent.Kind.MESSAGE, sender_external_id__in=contact_identities(recipient_id)
        )
        .order_by("-id")
        .values_list("normalized__message_id", flat=True)
        .first()
    )
    return str(found or "")


def window_state(*, channel: Channel, recipient_id: str, wrote_at: datetime | None = None) -> WindowState:
    """``wrote_at``: the caller knows the contact wrote then (the message a turn answers); while that
    alone keeps the window open, nothing is read (a later message could only open it further)."""
    adapter = get_adapter(channel.type)
    if not isinstance(adapter, WindowedAdapter):
        return WindowState(applies=False)
    rule: ServiceWindow = adapter.service_window
    if wrote_at is not None and timezone.now() < wrote_at + timedelta(hours=rule.hours):
        last: datetime | None = wrote_at
    else:
        last = last_inbound_at(channel=channel, recipient_id=recipient_id)
    if last is None:
        return WindowState(applies=True, human_agent_tag=rule.human_agent_tag)
    human_closes = last + timedelta(hours=rule.human_agent_hours) if rule.human_agent_tag else None
    return WindowState(
        applies=True,
        last_inbound_at=last,
        closes_at=last + timedelta(hours=rule.hours),
        human_agent_tag=rule.human_agent_tag,
        human_agent_closes_at=human_closes,
    )


def free_form_tag(*, channel: Channel, recipient_id: str, human: bool = False, wrote_at: datetime | None = None) -> str:
    """Check a free-form (non-template) send before it is made. Returns "" inside the window, or the
    message tag a human agent's reply must carry beyond it (Messenger ``HUMAN_AGENT``); raises
    OutsideWindow when no free-form message may go. ``wrote_at``: see ``window_state``."""
    state = window_state(channel=channel, recipient_id=recipient_id, wrote_at=wrote_at)
    now = timezone.now()
    if state.is_open(now):
        return ""
    if human and state.human_agent_closes_at is not None and now < state.human_agent_closes_at:
        return state.human_agent_tag
    if state.last_inbound_at is None:
        message = "this contact has never written on this channel: only an approved template can reach them"
    else:
        message = (
            f"the customer-service window closed at {state.closes_at:%Y-%m-%d %H:%M} UTC (24 hours after the "
            "contact's last message): only an approved template can reach them now"
        )
    closed = state.human_agent_closes_at if human and state.human_agent_closes_at else state.closes_at
    raise OutsideWindow(message, last_inbound_at=state.last_inbound_at, closed_at=closed)
