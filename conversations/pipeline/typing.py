"""Stage between the handoff check and retrieval: show the user we are on it (typing indicator,
WhatsApp read mark) while retrieval and the LLM work. Best effort: never fails the turn."""

from __future__ import annotations

import time

from conversations import outbound
from conversations.pipeline.turn import Turn


def run(turn: Turn) -> None:
    if not turn.answering or turn.contact is None:
        return
    started = time.monotonic()
    reply_to = turn.user_messages[-1].platform_message_id if turn.user_messages else ""
    outbound.send_typing(channel=turn.channel, recipient_id=turn.contact.external_id, reply_to_message_id=reply_to)
    turn.time("typing_ms", started)
